// ringbase.hpp: a small header-only C++17 wrapper over the C API of libringbase.
//
// RAII owns every handle (Client, Batch, List); failures throw ringbase::Error, which
// carries the status code and the library's detail message; "not found" is an empty
// std::optional rather than an exception. The rules of ringbase.h still hold: a Client
// is used by one thread at a time (give each thread its own), and views
// (std::string_view results) are valid only as long as the C API says.
#ifndef RINGBASE_HPP
#define RINGBASE_HPP

#include <ringbase.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace ringbase {

/// Value encoding.
enum class Kind : int { Json = RINGBASE_JSON, Bytes = RINGBASE_BYTES };

/// A failed call: `code()` is the RINGBASE_E_* code.
class Error : public std::runtime_error {
  public:
    Error(int code, const char *detail)
        : std::runtime_error(std::string(ringbase_strerror(code)) + ": " + detail), code_(code) {}
    int code() const noexcept { return code_; }

  private:
    int code_;
};

namespace detail {
// The calling thread's last error is set by every failing call, with or without a
// handle, so it is the one place to read details from.
inline void check(int rc) {
    if (rc != RINGBASE_OK) throw Error(rc, ringbase_last_error(nullptr));
}
struct CloseClient {
    void operator()(ringbase_client *c) const noexcept { ringbase_close(c); }
};
struct AbortBatch {
    void operator()(ringbase_batch *b) const noexcept { ringbase_batch_abort(b); }
};
struct FreeList {
    void operator()(ringbase_list *l) const noexcept { ringbase_list_free(l); }
};
struct FreeValue {
    void operator()(void *p) const noexcept { ringbase_free(p); }
};
}  // namespace detail

/// A value read with Client::get: an owned copy.
struct Value {
    std::string bytes;
    Kind kind;
};

/// A record from List::next: views valid until the next List::next or the List's end.
struct RecordView {
    std::string_view key;
    std::string_view value;
    Kind kind;
};

/// A completion from Client::poll. `value` is valid until the next call on the client.
struct Completion {
    std::uint64_t ticket;
    int op;      // RINGBASE_OP_*
    int status;  // RINGBASE_OK or RINGBASE_E_*
    std::string_view value;
    int kind;
    bool ok() const noexcept { return status == RINGBASE_OK; }
};

/// Server status (strings copied).
struct Status {
    std::uint64_t records, uptime_ms, db_size_bytes;
    std::uint32_t sessions, pid, protocol;
    std::string data_dir, version;
};

/// An atomic batch: collect puts and deletes, then commit() them all or none. Aborted
/// if destroyed before commit().
class Batch {
  public:
    Batch &put(std::string_view key, std::string_view value, Kind kind = Kind::Json) {
        detail::check(ringbase_batch_put(b_.get(), key.data(), key.size(), value.data(),
                                         value.size(), static_cast<int>(kind)));
        return *this;
    }
    Batch &del(std::string_view key) {
        detail::check(ringbase_batch_delete(b_.get(), key.data(), key.size()));
        return *this;
    }
    /// Applies the batch; the batch is used up whether it succeeds or throws.
    void commit() { detail::check(ringbase_batch_commit(b_.release())); }

  private:
    friend class Client;
    explicit Batch(ringbase_batch *b) : b_(b) {}
    std::unique_ptr<ringbase_batch, detail::AbortBatch> b_;
};

/// Live records in key order, fetched as you go.
class List {
  public:
    /// The next record, or nullopt at the end.
    std::optional<RecordView> next() {
        const char *k = nullptr;
        const void *v = nullptr;
        std::size_t kl = 0, vl = 0;
        int kind = 0;
        int rc = ringbase_list_next(l_.get(), &k, &kl, &v, &vl, &kind);
        if (rc == RINGBASE_E_NOT_FOUND) return std::nullopt;
        detail::check(rc);
        return RecordView{{k, kl}, {static_cast<const char *>(v), vl}, static_cast<Kind>(kind)};
    }

  private:
    friend class Client;
    explicit List(ringbase_list *l) : l_(l) {}
    std::unique_ptr<ringbase_list, detail::FreeList> l_;
};

/// Connection settings for Client::connect_with (ringbase_options in ringbase.h);
/// what is left unset keeps its default. The strings are only read during the call.
struct Options {
    const char *name = nullptr;         ///< server name (nullptr = "default")
    const char *runtime_dir = nullptr;  ///< where servers' sockets live (nullptr = default)
    bool busy_poll = false;             ///< never sleep while waiting (lowest latency)
    bool spawn = false;                 ///< start the server if none runs
    const char *server_path = nullptr;  ///< with spawn: the ringbase binary (nullptr = lookup)
    std::uint64_t request_ring = 0;     ///< bytes (0 = server default, 2 MiB)
    std::uint64_t response_ring = 0;    ///< bytes (0 = server default, 2 MiB)
    /// Longest a call waits for a live server (0 = no limit); a timeout throws an Error
    /// with code RINGBASE_E_TIMEOUT and ends the session.
    std::chrono::milliseconds call_timeout{0};
};

/// One session with a Ringbase server. Movable, not copyable; closed by its destructor.
class Client {
  public:
    /// Connects with explicit settings (name, runtime dir, wait mode, ring sizes, call
    /// timeout, optional server start).
    static Client connect_with(const Options &o) {
        ringbase_options c{};
        c.name = o.name;
        c.runtime_dir = o.runtime_dir;
        c.wait_mode = o.busy_poll ? RINGBASE_WAIT_BUSY_POLL : RINGBASE_WAIT_ADAPTIVE;
        c.spawn = o.spawn ? 1 : 0;
        c.server_path = o.server_path;
        c.request_ring = o.request_ring;
        c.response_ring = o.response_ring;
        c.call_timeout_ms = static_cast<std::uint64_t>(o.call_timeout.count());
        ringbase_client *h = nullptr;
        detail::check(ringbase_connect_with(&c, &h));
        return Client(h);
    }
    /// Connects to a running server (nullptr = "default").
    static Client connect(const char *name = nullptr) {
        ringbase_client *c = nullptr;
        detail::check(ringbase_connect(name, &c));
        return Client(c);
    }
    /// Connects, starting the server first if none runs (nullptr path = default lookup).
    static Client connect_or_spawn(const char *name = nullptr, const char *server_path = nullptr) {
        ringbase_client *c = nullptr;
        detail::check(ringbase_connect_or_spawn(name, server_path, &c));
        return Client(c);
    }

    void put(std::string_view key, std::string_view value, Kind kind = Kind::Json) {
        detail::check(ringbase_put(c_.get(), key.data(), key.size(), value.data(), value.size(),
                                   static_cast<int>(kind)));
    }

    /// A copy of the value, or nullopt if the key has no record.
    std::optional<Value> get(std::string_view key) {
        void *p = nullptr;
        std::size_t n = 0;
        int kind = 0;
        int rc = ringbase_get(c_.get(), key.data(), key.size(), &p, &n, &kind);
        if (rc == RINGBASE_E_NOT_FOUND) return std::nullopt;
        detail::check(rc);
        std::unique_ptr<void, detail::FreeValue> owned(p);
        return Value{std::string(static_cast<const char *>(p), n), static_cast<Kind>(kind)};
    }

    /// The value in place (zero copy): valid until the next call on this client.
    std::optional<std::string_view> get_view(std::string_view key, Kind *kind = nullptr) {
        const void *p = nullptr;
        std::size_t n = 0;
        int k = 0;
        int rc = ringbase_get_view(c_.get(), key.data(), key.size(), &p, &n, &k);
        if (rc == RINGBASE_E_NOT_FOUND) return std::nullopt;
        detail::check(rc);
        if (kind) *kind = static_cast<Kind>(k);
        return std::string_view(static_cast<const char *>(p), n);
    }

    /// Deletes; false if the key had no record.
    bool del(std::string_view key) {
        int rc = ringbase_delete(c_.get(), key.data(), key.size());
        if (rc == RINGBASE_E_NOT_FOUND) return false;
        detail::check(rc);
        return true;
    }

    std::uint64_t count(std::string_view prefix = {}) {
        std::uint64_t n = 0;
        detail::check(ringbase_count(c_.get(), prefix.data(), prefix.size(), &n));
        return n;
    }

    Status status() {
        ringbase_status_info s{};
        detail::check(ringbase_status(c_.get(), &s));
        return Status{s.records, s.uptime_ms, s.db_size_bytes, s.sessions,
                      s.pid,     s.protocol,  s.data_dir,      s.version};
    }

    Batch batch() {
        ringbase_batch *b = nullptr;
        detail::check(ringbase_batch_begin(c_.get(), &b));
        return Batch(b);
    }

    /// Records whose key starts with `prefix`, after `start_after` if given, at most
    /// `limit` (0 = all).
    List list(std::string_view prefix = {}, std::optional<std::string_view> start_after = {},
              std::uint64_t limit = 0) {
        ringbase_list *l = nullptr;
        detail::check(ringbase_list_begin(c_.get(), prefix.data(), prefix.size(),
                                          start_after ? start_after->data() : nullptr,
                                          start_after ? start_after->size() : 0, limit, &l));
        return List(l);
    }

    // Non-blocking path: submit now, poll for completions later.
    std::uint64_t submit_get(std::string_view key) {
        std::uint64_t t = 0;
        detail::check(ringbase_submit_get(c_.get(), key.data(), key.size(), &t));
        return t;
    }
    std::uint64_t submit_put(std::string_view key, std::string_view value, Kind kind = Kind::Json) {
        std::uint64_t t = 0;
        detail::check(ringbase_submit_put(c_.get(), key.data(), key.size(), value.data(),
                                          value.size(), static_cast<int>(kind), &t));
        return t;
    }
    std::uint64_t submit_del(std::string_view key) {
        std::uint64_t t = 0;
        detail::check(ringbase_submit_delete(c_.get(), key.data(), key.size(), &t));
        return t;
    }
    /// The next completion, or nullopt if none is ready yet. Never waits.
    std::optional<Completion> poll() {
        ringbase_completion d{};
        int rc = ringbase_poll(c_.get(), &d);
        if (rc == RINGBASE_E_AGAIN) return std::nullopt;
        detail::check(rc);
        return Completion{d.ticket, d.op, d.status,
                          std::string_view(static_cast<const char *>(d.value), d.value_len),
                          d.kind};
    }
    std::size_t in_flight() {
        std::size_t n = 0;
        detail::check(ringbase_in_flight(c_.get(), &n));
        return n;
    }
    /// The detail of the last failure on this client (e.g. of a failed completion).
    const char *last_error() const noexcept { return ringbase_last_error(c_.get()); }

    /// The C handle, for calls this wrapper does not cover.
    ringbase_client *handle() const noexcept { return c_.get(); }

  private:
    explicit Client(ringbase_client *c) : c_(c) {}
    std::unique_ptr<ringbase_client, detail::CloseClient> c_;
};

}  // namespace ringbase

#endif  // RINGBASE_HPP

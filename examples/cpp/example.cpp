/*
 * example.cpp: the C++ wrapper (ringbase.hpp) in use.
 *
 *   c++ -std=c++17 -I ffi/include -I examples/cpp examples/cpp/example.cpp \
 *       -L target/debug -lringbase -Wl,-rpath,$PWD/target/debug -o example
 *   RINGBASE_SERVER=target/debug/ringbase ./example [NAME]
 */
#include "ringbase.hpp"

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : nullptr;
    try {
        // Start the server if it is not running; give up on a call after 5 s rather than
        // hang a frame on a stuck server.
        ringbase::Options opts;
        opts.name = name;
        opts.spawn = true;
        opts.call_timeout = std::chrono::seconds(5);
        auto db = ringbase::Client::connect_with(opts);

        db.put("settings:volume", "0.8");
        db.put("settings:name", "\"Ada\"");
        db.put("save:slot1", std::string("\x00\x01\x02", 3), ringbase::Kind::Bytes);

        if (auto v = db.get("settings:name")) std::printf("settings:name = %s\n", v->bytes.c_str());
        if (!db.get("settings:missing")) std::printf("settings:missing: not found\n");
        if (auto view = db.get_view("save:slot1"))
            std::printf("save:slot1 has %zu bytes (read in place)\n", view->size());

        // All or nothing.
        db.batch().put("inventory:sword", "1").put("inventory:shield", "1").del("settings:volume").commit();
        try {
            db.batch().put("inventory:potion", "3").put("inventory:bad", "{oops").commit();
        } catch (const ringbase::Error &e) {
            std::printf("batch refused as a whole: %s\n", e.what());
        }
        std::printf("inventory has %llu items\n", (unsigned long long)db.count("inventory:"));

        auto list = db.list("inventory:");
        while (auto r = list.next())
            std::printf("  %.*s = %.*s\n", (int)r->key.size(), r->key.data(), (int)r->value.size(),
                        r->value.data());

        // Non-blocking: submit, keep working, poll.
        std::vector<std::uint64_t> tickets;
        for (int i = 0; i < 10; i++)
            tickets.push_back(db.submit_put("tick:" + std::to_string(i), std::to_string(i)));
        tickets.push_back(db.submit_get("tick:9"));
        std::size_t done = 0;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (done < tickets.size() && std::chrono::steady_clock::now() < deadline) {
            if (auto c = db.poll()) {
                if (!c->ok()) std::printf("ticket %llu failed: %s\n", (unsigned long long)c->ticket, db.last_error());
                if (c->op == RINGBASE_OP_GET) std::printf("tick:9 = %.*s\n", (int)c->value.size(), c->value.data());
                done++;
            } else {
                std::this_thread::sleep_for(std::chrono::microseconds(100));  // a frame's other work
            }
        }
        if (done != tickets.size()) {
            std::fprintf(stderr, "only %zu of %zu completions arrived\n", done, tickets.size());
            return 1;
        }

        auto s = db.status();
        std::printf("server %s (pid %u): %llu records, %u sessions\n", s.version.c_str(), s.pid,
                    (unsigned long long)s.records, s.sessions);

        try {
            db.put("bad", "{not json");
        } catch (const ringbase::Error &e) {
            std::printf("expected error (code %d): %s\n", e.code(), e.what());
        }
        std::printf("done\n");
    } catch (const ringbase::Error &e) {
        std::fprintf(stderr, "ringbase: %s\n", e.what());
        return 1;
    }
    return 0;
}

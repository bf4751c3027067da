/*
 * test_ringbase.c: calls every function of libringbase and every error path that a
 * client can provoke, against a real server.
 *
 * Run by ffi/tests/c_programs.rs, linked once against libringbase.a and once against
 * libringbase.so, and under valgrind. The environment it expects:
 *   RINGBASE_RUNTIME_DIR      runtime dir of the test server
 *   RINGBASE_TEST_NAME        name of a running server started with --max-sessions 8;
 *                             this program kills it (SIGKILL) at the end
 *   RINGBASE_TEST_SERVER_BIN  the ringbase binary (for the spawn path)
 *   RINGBASE_DATA_DIR         data dir for the server this program spawns
 *   RINGBASE_TEST_VERSION     expected ringbase_version()
 * Prints one line per failed check and closes with "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include "ringbase.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            passed++;                                                                 \
        } else {                                                                      \
            failed++;                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__,  \
                    #cond, ringbase_last_error(NULL));                                \
        }                                                                             \
    } while (0)

/* Checks a status code and prints both codes' names when it differs. */
#define CHECK_RC(expr, want)                                                          \
    do {                                                                              \
        int rc_ = (expr);                                                             \
        if (rc_ == (want)) {                                                          \
            passed++;                                                                 \
        } else {                                                                      \
            failed++;                                                                 \
            fprintf(stderr, "FAIL %s:%d: %s returned %d (%s), want %d (%s); last error: %s\n", \
                    __FILE__, __LINE__, #expr, rc_, ringbase_strerror(rc_), (want),   \
                    ringbase_strerror(want), ringbase_last_error(NULL));              \
        }                                                                             \
    } while (0)

#define K(s) (s), strlen(s)

static const char *env(const char *name) {
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "test_ringbase: %s is not set\n", name);
        exit(2);
    }
    return v;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Polls until a completion arrives or `seconds` pass; returns poll's last code. */
static int poll_wait(ringbase_client *c, ringbase_completion *done, double seconds) {
    double deadline = now_s() + seconds;
    int rc;
    while ((rc = ringbase_poll(c, done)) == RINGBASE_E_AGAIN && now_s() < deadline) {
        pause_us(100);
    }
    return rc;
}

static void test_static_functions(void) {
    const int codes[] = {
        RINGBASE_OK, RINGBASE_E_INVALID, RINGBASE_E_NOT_FOUND, RINGBASE_E_DISCONNECTED,
        RINGBASE_E_NOT_RUNNING, RINGBASE_E_PROTOCOL, RINGBASE_E_REFUSED,
        RINGBASE_E_TOO_LARGE, RINGBASE_E_INVALID_KEY, RINGBASE_E_INVALID_JSON,
        RINGBASE_E_STORAGE, RINGBASE_E_AGAIN, RINGBASE_E_INTERNAL, RINGBASE_E_NOMEM,
        RINGBASE_E_CORRUPT, RINGBASE_E_BAD_REQUEST, RINGBASE_E_UNSUPPORTED,
        RINGBASE_E_SHUTTING_DOWN, RINGBASE_E_SERVER, RINGBASE_E_IO, RINGBASE_E_TIMEOUT,
        RINGBASE_E_INVALID_QUERY, RINGBASE_E_READ_ONLY, RINGBASE_E_BUDGET, RINGBASE_E_EXPIRED,
        RINGBASE_E_INVALID_VECTOR, RINGBASE_E_NO_EMBEDDER,
    };
    const char *unknown = ringbase_strerror(12345);
    CHECK(unknown != NULL && *unknown);
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = ringbase_strerror(codes[i]);
        CHECK(s != NULL && *s);
        CHECK(strcmp(s, unknown) != 0);
        CHECK(codes[i] == 0 || (codes[i] <= -30800 && codes[i] > -30900));
    }
    CHECK(strcmp(ringbase_strerror(RINGBASE_OK), "success") == 0);
    CHECK(strcmp(ringbase_version(), env("RINGBASE_TEST_VERSION")) == 0);
    CHECK(strcmp(ringbase_last_error(NULL), "") == 0);
    ringbase_free(NULL);
    ringbase_close(NULL);
    ringbase_batch_abort(NULL);
    ringbase_list_free(NULL);
    ringbase_rows_free(NULL);
}

/* Every handle function with a NULL handle: RINGBASE_E_INVALID and a message. */
static void test_null_handles(void) {
    void *v = NULL;
    const void *cv = NULL;
    const char *ck = NULL;
    size_t n = 0;
    uint64_t u = 0;
    int kind = 0;
    ringbase_status_info info;
    ringbase_completion done;
    ringbase_batch *b = NULL;
    ringbase_list *it = NULL;

    CHECK_RC(ringbase_ping(NULL), RINGBASE_E_INVALID);
    CHECK(strstr(ringbase_last_error(NULL), "NULL") != NULL);
    CHECK_RC(ringbase_put(NULL, K("k"), "1", 1, RINGBASE_JSON), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get(NULL, K("k"), &v, &n, &kind), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get_view(NULL, K("k"), &cv, &n, &kind), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_delete(NULL, K("k")), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_count(NULL, NULL, 0, &u), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_max_value_len(NULL, &n), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_status(NULL, &info), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_batch_begin(NULL, &b), RINGBASE_E_INVALID);
    CHECK(b == NULL);
    CHECK_RC(ringbase_batch_put(NULL, K("k"), "1", 1, RINGBASE_JSON), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_batch_delete(NULL, K("k")), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_batch_commit(NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_list_begin(NULL, NULL, 0, NULL, 0, 0, &it), RINGBASE_E_INVALID);
    CHECK(it == NULL);
    CHECK_RC(ringbase_list_next(NULL, &ck, &n, &cv, &n, &kind), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_get(NULL, K("k"), &u), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_put(NULL, K("k"), "1", 1, RINGBASE_JSON, &u), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_delete(NULL, K("k"), &u), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_poll(NULL, &done), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_in_flight(NULL, &n), RINGBASE_E_INVALID);
    ringbase_rows *rows = NULL;
    ringbase_value val;
    CHECK_RC(ringbase_query(NULL, K("SELECT 1"), NULL, 0, 0, 0, &rows), RINGBASE_E_INVALID);
    CHECK(rows == NULL);
    CHECK_RC(ringbase_rows_next(NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_rows_get(NULL, 0, &val), RINGBASE_E_INVALID);
    CHECK(ringbase_rows_count(NULL) == 0 && ringbase_rows_column_count(NULL) == 0);
    CHECK(ringbase_rows_column_name(NULL, 0) == NULL && ringbase_rows_truncated(NULL) == 0);
    CHECK_RC(ringbase_index_create(NULL, K("$.a"), NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_index_drop(NULL, K("$.a"), NULL), RINGBASE_E_INVALID);
    ringbase_hits *hits = NULL;
    CHECK_RC(ringbase_search(NULL, K("x"), 0, &hits), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_fulltext(NULL, 1, NULL), RINGBASE_E_INVALID);
    ringbase_event ev;
    CHECK_RC(ringbase_watch(NULL, K("a"), -1, 0, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_unwatch(NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_next_event(NULL, &ev, 0), RINGBASE_E_INVALID);
    CHECK(ringbase_hits_count(NULL) == 0);
    CHECK_RC(ringbase_hits_next(NULL, &ck, &n, NULL, NULL, NULL), RINGBASE_E_INVALID);
    ringbase_hits_free(NULL);
    const float vec[2] = {1, 0};
    ringbase_neighbors *nb = NULL;
    ringbase_neighbor one;
    CHECK_RC(ringbase_put_with_vector(NULL, K("a"), K("1"), RINGBASE_JSON, vec, 2),
             RINGBASE_E_INVALID);
    CHECK_RC(ringbase_vsearch(NULL, vec, 2, NULL, &nb), RINGBASE_E_INVALID);
    CHECK(nb == NULL && ringbase_neighbors_count(NULL) == 0);
    CHECK_RC(ringbase_neighbors_next(NULL, &one), RINGBASE_E_INVALID);
    ringbase_neighbors_free(NULL);
}

/* Vector search: puts with an embedding, nearest neighbours, prefixes, values, errors. */
static void test_vectors(ringbase_client *c) {
    ringbase_neighbors *nb = (ringbase_neighbors *)&nb;
    const float q[4] = {1, 0, 0, 0};
    /* Nothing stored yet: no results. */
    CHECK_RC(ringbase_vsearch(c, q, 4, NULL, &nb), RINGBASE_OK);
    CHECK(ringbase_neighbors_count(nb) == 0);
    ringbase_neighbors_free(nb);
    char key[32], val[32];
    for (int i = 0; i < 50; i++) {
        float v[4] = {(float)(i % 7) - 3.0f, (float)(i % 5), (float)i / 10.0f, 1.0f};
        int kn = snprintf(key, sizeof key, "%s:%02d", i < 40 ? "vec" : "other", i);
        int vn = snprintf(val, sizeof val, "{\"i\":%d}", i);
        CHECK_RC(ringbase_put_with_vector(c, key, (size_t)kn, val, (size_t)vn, RINGBASE_JSON, v, 4),
                 RINGBASE_OK);
    }
    /* Each stored vector finds its record first, score 1. */
    const float v7[4] = {(float)(7 % 7) - 3.0f, (float)(7 % 5), 0.7f, 1.0f};
    ringbase_vsearch_options o;
    memset(&o, 0, sizeof o);
    o.k = 3;
    o.with_values = 1;
    CHECK_RC(ringbase_vsearch(c, v7, 4, &o, &nb), RINGBASE_OK);
    CHECK(ringbase_neighbors_count(nb) == 3);
    ringbase_neighbor n;
    CHECK_RC(ringbase_neighbors_next(nb, &n), RINGBASE_OK);
    CHECK(n.key_len == 6 && strcmp(n.key, "vec:07") == 0);
    CHECK(n.score > 0.9999f && n.score <= 1.0f);
    CHECK(n.kind == RINGBASE_JSON && n.value_len == 7 && strcmp((const char *)n.value, "{\"i\":7}") == 0);
    float prev = n.score;
    int order_ok = 1, count = 1;
    while (ringbase_neighbors_next(nb, &n) == RINGBASE_OK) {
        if (n.score > prev) order_ok = 0;
        prev = n.score;
        count++;
    }
    CHECK(order_ok && count == 3);
    CHECK_RC(ringbase_neighbors_next(nb, &n), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_neighbors_next(nb, NULL), RINGBASE_E_INVALID);
    ringbase_neighbors_free(nb);
    /* A prefix: every result under it, k of them when k exist, no values unless asked. */
    memset(&o, 0, sizeof o);
    o.k = 20;
    o.prefix = "other:";
    o.prefix_len = 6;
    CHECK_RC(ringbase_vsearch(c, q, 4, &o, &nb), RINGBASE_OK);
    CHECK(ringbase_neighbors_count(nb) == 10);
    int under = 1;
    while (ringbase_neighbors_next(nb, &n) == RINGBASE_OK) {
        if (strncmp(n.key, "other:", 6) != 0 || n.value != NULL || n.kind != 0) under = 0;
    }
    CHECK(under);
    ringbase_neighbors_free(nb);
    /* Bad vectors: clear errors, nothing stored. */
    const float three[3] = {1, 2, 3};
    const float zero[4] = {0, 0, 0, 0};
    float nan4[4] = {1, 1, 1, 1};
    nan4[2] = nan4[2] / 0.0f - nan4[2] / 0.0f; /* inf - inf = NaN */
    CHECK_RC(ringbase_put_with_vector(c, K("vec:bad"), K("1"), RINGBASE_JSON, three, 3),
             RINGBASE_E_INVALID_VECTOR);
    CHECK(strstr(ringbase_last_error(c), "3 dimensions") != NULL);
    CHECK_RC(ringbase_put_with_vector(c, K("vec:bad"), K("1"), RINGBASE_JSON, zero, 4),
             RINGBASE_E_INVALID_VECTOR);
    CHECK_RC(ringbase_put_with_vector(c, K("vec:bad"), K("1"), RINGBASE_JSON, nan4, 4),
             RINGBASE_E_INVALID_VECTOR);
    CHECK_RC(ringbase_put_with_vector(c, K("vec:bad"), K("1"), RINGBASE_JSON, NULL, 4),
             RINGBASE_E_INVALID);
    CHECK_RC(ringbase_put_with_vector(c, K("vec:bad"), K("1"), RINGBASE_JSON, NULL, 0),
             RINGBASE_E_INVALID_VECTOR);
    void *v = NULL;
    size_t vlen = 0;
    CHECK_RC(ringbase_get(c, K("vec:bad"), &v, &vlen, NULL), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_vsearch(c, three, 3, NULL, &nb), RINGBASE_E_INVALID_VECTOR);
    CHECK(nb == NULL);
    CHECK_RC(ringbase_vsearch(c, q, 4, NULL, NULL), RINGBASE_E_INVALID);
    memset(&o, 0, sizeof o);
    o.prefix_len = 3; /* NULL prefix with a length */
    CHECK_RC(ringbase_vsearch(c, q, 4, &o, &nb), RINGBASE_E_INVALID);
    /* A plain put drops the vector; a delete too. */
    CHECK_RC(ringbase_put(c, K("vec:07"), K("{}"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_delete(c, K("vec:08")), RINGBASE_OK);
    memset(&o, 0, sizeof o);
    o.k = 1000;
    CHECK_RC(ringbase_vsearch(c, q, 4, &o, &nb), RINGBASE_OK);
    CHECK(ringbase_neighbors_count(nb) == 48);
    int gone = 1;
    while (ringbase_neighbors_next(nb, &n) == RINGBASE_OK) {
        if (strcmp(n.key, "vec:07") == 0 || strcmp(n.key, "vec:08") == 0) gone = 0;
    }
    CHECK(gone);
    ringbase_neighbors_free(nb);
    ringbase_status_info info;
    CHECK_RC(ringbase_status(c, &info), RINGBASE_OK);
    CHECK(info.vector_dim == 4 && info.vectors == 48);
    /* Text search needs the server's embedding model: this server has none. */
    CHECK(info.vector_embedder != NULL && info.vector_embedder[0] == '\0');
    /* Nor does it replicate. */
    CHECK(info.sync_enabled == 0 && info.sync_peers == 0 && info.sync_behind == 0);
    CHECK(strcmp(info.sync_mode, "") == 0 && strcmp(info.sync_peer_id, "") == 0);
    nb = (ringbase_neighbors *)&nb; /* must be overwritten with NULL */
    CHECK_RC(ringbase_search_text(c, K("red sword"), NULL, &nb), RINGBASE_E_NO_EMBEDDER);
    CHECK(nb == NULL);
    CHECK(strstr(ringbase_last_error(c), "--embed-model") != NULL);
    CHECK_RC(ringbase_search_text(c, NULL, 3, NULL, &nb), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_search_text(c, K("red sword"), NULL, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_search_text(c, K("\xff"), NULL, &nb), RINGBASE_E_INVALID);
}

static void test_connect_errors(const char *server_bin) {
    ringbase_client *c = (ringbase_client *)&c; /* must be overwritten with NULL */
    CHECK_RC(ringbase_connect("rb-test-nobody-here", NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_connect("rb-test-nobody-here", &c), RINGBASE_E_NOT_RUNNING);
    CHECK(c == NULL);
    CHECK(strstr(ringbase_last_error(NULL), "rb-test-nobody-here") != NULL);
    c = (ringbase_client *)&c;
    CHECK_RC(ringbase_connect("../escape", &c), RINGBASE_E_INVALID);
    CHECK(c == NULL);
    CHECK_RC(ringbase_connect("bad\xff", &c), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_connect_or_spawn("rb-test-nobody-here", "/nonexistent/ringbase", &c),
             RINGBASE_E_IO);
    CHECK(c == NULL);
    CHECK(strstr(ringbase_last_error(NULL), "/nonexistent/ringbase") != NULL);
    CHECK_RC(ringbase_connect_or_spawn("rb-test-nobody-here", server_bin, NULL),
             RINGBASE_E_INVALID);
}

/* Starts a server through connect_or_spawn, uses it, and stops it. */
static void test_spawn(const char *server_bin) {
    char name[64];
    snprintf(name, sizeof name, "rb-test-spawn-%ld", (long)getpid());
    ringbase_client *c = NULL;
    CHECK_RC(ringbase_connect_or_spawn(name, server_bin, &c), RINGBASE_OK);
    if (!c) return;
    /* A second connect_or_spawn finds the running server. */
    ringbase_client *c2 = NULL;
    CHECK_RC(ringbase_connect_or_spawn(name, server_bin, &c2), RINGBASE_OK);
    CHECK_RC(ringbase_put(c, K("spawned"), K("true"), RINGBASE_JSON), RINGBASE_OK);
    void *v = NULL;
    size_t n = 0;
    CHECK_RC(ringbase_get(c2, K("spawned"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == 4 && v && memcmp(v, "true", 4) == 0);
    ringbase_free(v);
    ringbase_status_info info;
    CHECK_RC(ringbase_status(c, &info), RINGBASE_OK);
    ringbase_close(c2);
    ringbase_close(c);
    /* Stop it cleanly (it drains and exits on SIGTERM). */
    if (info.pid > 0) kill((pid_t)info.pid, SIGTERM);
}

static void test_key_value(ringbase_client *c) {
    void *v = NULL;
    const void *cv = NULL;
    size_t n = 99;
    int kind = 0;

    CHECK_RC(ringbase_ping(c), RINGBASE_OK);

    /* JSON round trip, copy and view. */
    const char *json = "{\"name\":\"Ada\",\"hp\":100}";
    CHECK_RC(ringbase_put(c, K("player:1"), json, strlen(json), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_get(c, K("player:1"), &v, &n, &kind), RINGBASE_OK);
    CHECK(n == strlen(json) && kind == RINGBASE_JSON);
    CHECK(v && strcmp((const char *)v, json) == 0); /* NUL-terminated copy */
    ringbase_free(v);
    CHECK_RC(ringbase_get_view(c, K("player:1"), &cv, &n, &kind), RINGBASE_OK);
    CHECK(n == strlen(json) && cv && memcmp(cv, json, n) == 0 && kind == RINGBASE_JSON);

    /* Bytes with NULs, an empty value, a NULL kind pointer; keys cannot hold NUL. */
    const unsigned char blob[] = {0, 1, 2, 0, 255};
    CHECK_RC(ringbase_put(c, K("blob"), blob, sizeof blob, RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_get(c, K("blob"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == sizeof blob && v && memcmp(v, blob, n) == 0);
    ringbase_free(v);
    CHECK_RC(ringbase_put(c, K("empty"), NULL, 0, RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_get(c, K("empty"), &v, &n, &kind), RINGBASE_OK);
    CHECK(n == 0 && v != NULL && kind == RINGBASE_BYTES);
    ringbase_free(v);
    CHECK_RC(ringbase_put(c, "nul\0key", 7, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_get_view(c, "nul", 3, &cv, &n, NULL), RINGBASE_E_NOT_FOUND);

    /* Overwrite, delete, missing keys. */
    CHECK_RC(ringbase_put(c, K("player:1"), K("[1,2]"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_get_view(c, K("player:1"), &cv, &n, NULL), RINGBASE_OK);
    CHECK(n == 5 && memcmp(cv, "[1,2]", 5) == 0);
    CHECK_RC(ringbase_delete(c, K("player:1")), RINGBASE_OK);
    v = (void *)&v;
    n = 99;
    CHECK_RC(ringbase_get(c, K("player:1"), &v, &n, &kind), RINGBASE_E_NOT_FOUND);
    CHECK(v == NULL && n == 0);
    CHECK(strstr(ringbase_last_error(c), "player:1") != NULL);
    CHECK(strcmp(ringbase_last_error(c), ringbase_last_error(NULL)) == 0);
    cv = &cv;
    CHECK_RC(ringbase_get_view(c, K("player:1"), &cv, &n, &kind), RINGBASE_E_NOT_FOUND);
    CHECK(cv == NULL && n == 0);
    CHECK_RC(ringbase_delete(c, K("player:1")), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_delete(c, K("never-was")), RINGBASE_E_NOT_FOUND);

    /* Argument errors. */
    CHECK_RC(ringbase_put(c, K("k"), K("1"), 7), RINGBASE_E_INVALID);
    CHECK(strstr(ringbase_last_error(c), "kind") != NULL);
    CHECK_RC(ringbase_put(c, NULL, 3, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_put(c, K("k"), NULL, 3, RINGBASE_JSON), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get(c, K("blob"), NULL, &n, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get(c, K("blob"), &v, NULL, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get_view(c, K("blob"), NULL, &n, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_get_view(c, K("blob"), &cv, NULL, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_count(c, NULL, 0, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_max_value_len(c, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_status(c, NULL), RINGBASE_E_INVALID);

    /* Keys: empty, not UTF-8, too long. */
    CHECK_RC(ringbase_put(c, NULL, 0, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_put(c, "", 0, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_put(c, "\xff\xfe", 2, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_get(c, "\xc3", 1, &v, &n, NULL), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_delete(c, "\xc3", 1), RINGBASE_E_INVALID_KEY);
    char longkey[RINGBASE_MAX_KEY_LEN + 1];
    memset(longkey, 'k', sizeof longkey);
    CHECK_RC(ringbase_put(c, longkey, sizeof longkey, K("1"), RINGBASE_JSON), RINGBASE_E_TOO_LARGE);
    CHECK_RC(ringbase_get(c, longkey, sizeof longkey, &v, &n, NULL), RINGBASE_E_TOO_LARGE);
    CHECK_RC(ringbase_put(c, longkey, RINGBASE_MAX_KEY_LEN, K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_delete(c, longkey, RINGBASE_MAX_KEY_LEN), RINGBASE_OK);

    /* Values: invalid JSON, the size limit. */
    CHECK_RC(ringbase_put(c, K("bad"), K("{not json"), RINGBASE_JSON), RINGBASE_E_INVALID_JSON);
    CHECK(strstr(ringbase_last_error(c), "server") != NULL);
    CHECK_RC(ringbase_get(c, K("bad"), &v, &n, NULL), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_put(c, K("bad"), K("{not json"), RINGBASE_BYTES), RINGBASE_OK);
    size_t max = 0;
    CHECK_RC(ringbase_max_value_len(c, &max), RINGBASE_OK);
    CHECK(max > 1000);
    unsigned char *big = calloc(max + 1, 1);
    CHECK_RC(ringbase_put(c, K("big"), big, max + 1, RINGBASE_BYTES), RINGBASE_E_TOO_LARGE);
    CHECK_RC(ringbase_put(c, K("big"), big, max, RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_get(c, K("big"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == max && v && memcmp(v, big, max) == 0);
    ringbase_free(v);
    CHECK_RC(ringbase_delete(c, K("big")), RINGBASE_OK);
    free(big);

    /* Count and status. */
    uint64_t count = 0;
    CHECK_RC(ringbase_put(c, K("count:a"), K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_put(c, K("count:b"), K("2"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_count(c, K("count:"), &count), RINGBASE_OK);
    CHECK(count == 2);
    CHECK_RC(ringbase_count(c, "\xff", 1, &count), RINGBASE_E_INVALID_KEY);
    uint64_t all = 0;
    CHECK_RC(ringbase_count(c, NULL, 0, &all), RINGBASE_OK);
    CHECK(all >= 5);
    ringbase_status_info info;
    memset(&info, 0, sizeof info);
    CHECK_RC(ringbase_status(c, &info), RINGBASE_OK);
    CHECK(info.records == all);
    CHECK(info.sessions >= 1 && info.pid > 0 && info.protocol > 0);
    CHECK(info.data_dir && *info.data_dir && info.version && *info.version);
    int id_set = 0;
    for (int i = 0; i < 16; i++) id_set |= info.replica_id[i];
    CHECK(id_set != 0);
}

static void test_batch(ringbase_client *c) {
    ringbase_batch *b = NULL;
    void *v = NULL;
    size_t n = 0;

    CHECK_RC(ringbase_batch_begin(c, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:a"), K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:b"), K("raw"), RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:c"), K("3"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_delete(b, K("batch:c")), RINGBASE_OK);
    CHECK_RC(ringbase_batch_delete(b, K("batch:none")), RINGBASE_OK);
    /* Argument errors leave the batch unchanged. */
    CHECK_RC(ringbase_batch_put(b, K("batch:x"), K("1"), 0), RINGBASE_E_INVALID);
    CHECK(strstr(ringbase_last_error(c), "kind") != NULL);
    CHECK_RC(ringbase_batch_put(b, NULL, 2, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_batch_put(b, "\xff", 1, K("1"), RINGBASE_JSON), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_batch_delete(b, "\xff", 1), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_OK);
    CHECK_RC(ringbase_get(c, K("batch:b"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == 3 && memcmp(v, "raw", 3) == 0);
    ringbase_free(v);
    CHECK_RC(ringbase_get(c, K("batch:c"), &v, &n, NULL), RINGBASE_E_NOT_FOUND);

    /* Atomic: one bad operation and nothing is applied. */
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:d"), K("4"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_delete(b, K("batch:a")), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:e"), K("{oops"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_E_INVALID_JSON);
    CHECK_RC(ringbase_get(c, K("batch:d"), &v, &n, NULL), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_get(c, K("batch:a"), &v, &n, NULL), RINGBASE_OK);
    ringbase_free(v);

    /* An empty key is reported by the commit. */
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, "", 0, K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_E_INVALID_KEY);

    /* Abort applies nothing; an empty batch commits. */
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:f"), K("6"), RINGBASE_JSON), RINGBASE_OK);
    ringbase_batch_abort(b);
    CHECK_RC(ringbase_get(c, K("batch:f"), &v, &n, NULL), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_OK);

    /* A batch over the session's size limit. */
    size_t max = 0;
    CHECK_RC(ringbase_max_value_len(c, &max), RINGBASE_OK);
    unsigned char *big = calloc(max, 1);
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:big1"), big, max, RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("batch:big2"), big, max, RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_E_TOO_LARGE);
    free(big);
}

static void test_list(ringbase_client *c) {
    enum { N = 600 }; /* more than one page */
    ringbase_batch *b = NULL;
    char key[32], val[32];
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof key, "list:%04d", i);
        snprintf(val, sizeof val, "%d", i);
        CHECK_RC(ringbase_batch_put(b, K(key), K(val), RINGBASE_JSON), RINGBASE_OK);
    }
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_OK);

    ringbase_list *it = NULL;
    const char *k = NULL;
    const void *v = NULL;
    size_t klen = 0, vlen = 0;
    int kind = 0, i = 0, in_order = 1;

    CHECK_RC(ringbase_list_begin(c, K("list:"), NULL, 0, 0, &it), RINGBASE_OK);
    int rc;
    while ((rc = ringbase_list_next(it, &k, &klen, &v, &vlen, &kind)) == RINGBASE_OK) {
        snprintf(key, sizeof key, "list:%04d", i);
        snprintf(val, sizeof val, "%d", i);
        if (klen != strlen(key) || strcmp(k, key) != 0 || vlen != strlen(val) ||
            memcmp(v, val, vlen) != 0 || kind != RINGBASE_JSON)
            in_order = 0;
        i++;
    }
    CHECK_RC(rc, RINGBASE_E_NOT_FOUND);
    CHECK(i == N && in_order);
    CHECK(k == NULL && klen == 0 && v == NULL && vlen == 0);
    CHECK_RC(ringbase_list_next(it, &k, &klen, &v, &vlen, &kind), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_list_next(it, NULL, &klen, &v, &vlen, &kind), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_list_next(it, &k, &klen, &v, NULL, NULL), RINGBASE_E_INVALID);
    ringbase_list_free(it);

    /* Limit and start-after. */
    CHECK_RC(ringbase_list_begin(c, K("list:"), K("list:0100"), 10, &it), RINGBASE_OK);
    i = 0;
    while (ringbase_list_next(it, &k, &klen, &v, &vlen, NULL) == RINGBASE_OK) {
        snprintf(key, sizeof key, "list:%04d", 101 + i);
        if (strcmp(k, key) != 0) in_order = 0;
        i++;
    }
    CHECK(i == 10 && in_order);
    ringbase_list_free(it);

    /* Every key (NULL prefix), and a prefix nothing has. */
    CHECK_RC(ringbase_list_begin(c, NULL, 0, NULL, 0, 0, &it), RINGBASE_OK);
    i = 0;
    while (ringbase_list_next(it, &k, &klen, &v, &vlen, NULL) == RINGBASE_OK) i++;
    uint64_t all = 0;
    CHECK_RC(ringbase_count(c, NULL, 0, &all), RINGBASE_OK);
    CHECK((uint64_t)i == all);
    ringbase_list_free(it);
    CHECK_RC(ringbase_list_begin(c, K("zzz-none:"), NULL, 0, 0, &it), RINGBASE_OK);
    CHECK_RC(ringbase_list_next(it, &k, &klen, &v, &vlen, NULL), RINGBASE_E_NOT_FOUND);
    ringbase_list_free(it);

    /* A key handed out stays valid across other calls on the client. */
    CHECK_RC(ringbase_list_begin(c, K("list:"), NULL, 0, 1, &it), RINGBASE_OK);
    CHECK_RC(ringbase_list_next(it, &k, &klen, &v, &vlen, NULL), RINGBASE_OK);
    CHECK_RC(ringbase_ping(c), RINGBASE_OK);
    CHECK(strcmp(k, "list:0000") == 0);
    ringbase_list_free(it);

    /* Argument errors. */
    it = (ringbase_list *)&it;
    CHECK_RC(ringbase_list_begin(c, NULL, 5, NULL, 0, 0, &it), RINGBASE_E_INVALID);
    CHECK(it == NULL);
    CHECK_RC(ringbase_list_begin(c, "\xff", 1, NULL, 0, 0, &it), RINGBASE_E_INVALID_KEY);
    CHECK_RC(ringbase_list_begin(c, K("list:"), NULL, 0, 0, NULL), RINGBASE_E_INVALID);
}

static void test_query(ringbase_client *c) {
    CHECK_RC(ringbase_put(c, K("q:1"), K("{\"type\":\"enemy\",\"hp\":7}"), RINGBASE_JSON),
             RINGBASE_OK);
    CHECK_RC(ringbase_put(c, K("q:2"), K("{\"type\":\"ally\",\"hp\":9}"), RINGBASE_JSON),
             RINGBASE_OK);

    /* Parameters of every type, and every type back. */
    const char blob[] = {0, 1, 2};
    ringbase_value params[5] = {
        {.type = RINGBASE_SQL_NULL},
        {.type = RINGBASE_SQL_INTEGER, .integer = -42},
        {.type = RINGBASE_SQL_REAL, .real = 0.25},
        {.type = RINGBASE_SQL_TEXT, .data = "enemy", .len = 5},
        {.type = RINGBASE_SQL_BLOB, .data = blob, .len = sizeof blob},
    };
    ringbase_rows *rows = NULL;
    CHECK_RC(ringbase_query(c, K("SELECT ?1 AS n, ?2 AS i, ?3 AS r, ?4 AS t, ?5 AS b"), params, 5,
                            0, 0, &rows),
             RINGBASE_OK);
    CHECK(ringbase_rows_column_count(rows) == 5);
    CHECK(strcmp(ringbase_rows_column_name(rows, 3), "t") == 0);
    CHECK(ringbase_rows_column_name(rows, 5) == NULL);
    CHECK(ringbase_rows_count(rows) == 1);
    CHECK(ringbase_rows_truncated(rows) == 0);
    ringbase_value v;
    CHECK_RC(ringbase_rows_get(rows, 0, &v), RINGBASE_E_INVALID); /* before next */
    CHECK_RC(ringbase_rows_next(rows), RINGBASE_OK);
    CHECK_RC(ringbase_rows_get(rows, 0, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_NULL);
    CHECK_RC(ringbase_rows_get(rows, 1, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_INTEGER && v.integer == -42);
    CHECK_RC(ringbase_rows_get(rows, 2, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_REAL && v.real == 0.25);
    CHECK_RC(ringbase_rows_get(rows, 3, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_TEXT && v.len == 5 && strcmp(v.data, "enemy") == 0);
    CHECK_RC(ringbase_rows_get(rows, 4, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_BLOB && v.len == 3 && memcmp(v.data, blob, 3) == 0);
    CHECK_RC(ringbase_rows_get(rows, 5, &v), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_rows_get(rows, 0, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_rows_next(rows), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_rows_next(rows), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_rows_get(rows, 0, &v), RINGBASE_E_INVALID);
    ringbase_rows_free(rows);

    /* The records view with a JSON filter; the rows outlive other calls on c. */
    CHECK_RC(ringbase_query(c,
                            K("SELECT key, json_extract(value, '$.hp') FROM records "
                              "WHERE key LIKE 'q:%' AND json_extract(value, '$.type') = ?"),
                            &params[3], 1, 0, 0, &rows),
             RINGBASE_OK);
    CHECK_RC(ringbase_ping(c), RINGBASE_OK);
    CHECK(ringbase_rows_count(rows) == 1);
    CHECK_RC(ringbase_rows_next(rows), RINGBASE_OK);
    CHECK_RC(ringbase_rows_get(rows, 0, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_TEXT && strcmp(v.data, "q:1") == 0);
    CHECK_RC(ringbase_rows_get(rows, 1, &v), RINGBASE_OK);
    CHECK(v.type == RINGBASE_SQL_INTEGER && v.integer == 7);
    ringbase_rows_free(rows);

    /* Row limit. */
    CHECK_RC(ringbase_query(c, K("SELECT key FROM records"), NULL, 0, 1, 0, &rows), RINGBASE_OK);
    CHECK(ringbase_rows_count(rows) == 1 && ringbase_rows_truncated(rows) == 1);
    ringbase_rows_free(rows);

    /* Errors: each leaves *out NULL and changes nothing. */
    rows = (ringbase_rows *)&rows;
    CHECK_RC(ringbase_query(c, K("DELETE FROM records"), NULL, 0, 0, 0, &rows),
             RINGBASE_E_READ_ONLY);
    CHECK(rows == NULL);
    CHECK(strstr(ringbase_last_error(c), "read-only") != NULL);
    CHECK_RC(ringbase_query(c, K("SELEC 1"), NULL, 0, 0, 0, &rows), RINGBASE_E_INVALID_QUERY);
    CHECK(strstr(ringbase_last_error(c), "syntax error") != NULL);
    CHECK_RC(ringbase_query(c, K("SELECT ?"), NULL, 0, 0, 0, &rows), RINGBASE_E_INVALID_QUERY);
    CHECK_RC(ringbase_query(c,
                            K("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                              "SELECT count(*) FROM n"),
                            NULL, 0, 0, 50, &rows),
             RINGBASE_E_BUDGET);
    CHECK_RC(ringbase_query(c, K("SELECT 1"), NULL, 2, 0, 0, &rows), RINGBASE_E_INVALID);
    ringbase_value bad = {.type = 99};
    CHECK_RC(ringbase_query(c, K("SELECT ?"), &bad, 1, 0, 0, &rows), RINGBASE_E_INVALID);
    ringbase_value not_utf8 = {.type = RINGBASE_SQL_TEXT, .data = "\xff", .len = 1};
    CHECK_RC(ringbase_query(c, K("SELECT ?"), &not_utf8, 1, 0, 0, &rows), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_query(c, NULL, 3, NULL, 0, 0, 0, &rows), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_query(c, K("SELECT 1"), NULL, 0, 0, 0, NULL), RINGBASE_E_INVALID);
    uint64_t n = 0;
    CHECK_RC(ringbase_count(c, K("q:"), &n), RINGBASE_OK);
    CHECK(n == 2);

    /* A JSON-field filter on a list, with and without an index on the field. */
    int changed = -1;
    for (int round = 0; round < 2; round++) {
        ringbase_list *it = NULL;
        const char *k = NULL;
        const void *val = NULL;
        size_t klen = 0, vlen = 0;
        CHECK_RC(ringbase_list_begin(c, K("q:"), NULL, 0, 0, &it), RINGBASE_OK);
        CHECK_RC(ringbase_list_where(it, K("$.type"), K("\"enemy\"")), RINGBASE_OK);
        CHECK_RC(ringbase_list_next(it, &k, &klen, &val, &vlen, NULL), RINGBASE_OK);
        CHECK(k != NULL && strcmp(k, "q:1") == 0);
        CHECK_RC(ringbase_list_where(it, K("$.type"), K("\"ally\"")), RINGBASE_E_INVALID);
        CHECK_RC(ringbase_list_next(it, &k, &klen, &val, &vlen, NULL), RINGBASE_E_NOT_FOUND);
        ringbase_list_free(it);
        if (round == 0) {
            CHECK_RC(ringbase_index_create(c, K("$.type"), &changed), RINGBASE_OK);
            CHECK(changed == 1);
            CHECK_RC(ringbase_index_create(c, K("$.type"), &changed), RINGBASE_OK);
            CHECK(changed == 0);
            ringbase_status_info info;
            CHECK_RC(ringbase_status(c, &info), RINGBASE_OK);
            CHECK(strcmp(info.indexes, "$.type") == 0 && info.fulltext == 0);
        }
    }
    CHECK_RC(ringbase_index_drop(c, K("$.type"), &changed), RINGBASE_OK);
    CHECK(changed == 1);
    CHECK_RC(ringbase_index_drop(c, K("$.type"), NULL), RINGBASE_OK);
    CHECK_RC(ringbase_index_create(c, K("type"), NULL), RINGBASE_E_INVALID_QUERY);
    CHECK_RC(ringbase_index_create(c, NULL, 0, NULL), RINGBASE_E_INVALID);
    ringbase_list *badit = NULL;
    const char *bk = NULL;
    const void *bv = NULL;
    size_t bkl = 0, bvl = 0;
    CHECK_RC(ringbase_list_begin(c, K("q:"), NULL, 0, 0, &badit), RINGBASE_OK);
    CHECK_RC(ringbase_list_where(badit, K("$.type"), K("{}")), RINGBASE_OK);
    CHECK_RC(ringbase_list_next(badit, &bk, &bkl, &bv, &bvl, NULL), RINGBASE_E_INVALID_QUERY);
    ringbase_list_free(badit);
    CHECK_RC(ringbase_list_where(NULL, K("$.a"), K("1")), RINGBASE_E_INVALID);

    /* Full-text search: off by default, on builds it over the stored records. */
    ringbase_hits *hits = (ringbase_hits *)&hits;
    CHECK_RC(ringbase_search(c, K("enemy"), 0, &hits), RINGBASE_E_UNSUPPORTED);
    CHECK(hits == NULL);
    CHECK_RC(ringbase_fulltext(c, 1, &changed), RINGBASE_OK);
    CHECK(changed == 1);
    CHECK_RC(ringbase_put(c, K("q:3"), K("{\"lore\":\"an enemy of enemies, the enemy\"}"),
                          RINGBASE_JSON),
             RINGBASE_OK);
    CHECK_RC(ringbase_search(c, K("ENEMY"), 0, &hits), RINGBASE_OK);
    CHECK(ringbase_hits_count(hits) == 2);
    const char *hk = NULL, *snip = NULL;
    size_t hklen = 0, snlen = 0;
    double score = 0, prev = 1e300;
    int order_ok = 1;
    while (ringbase_hits_next(hits, &hk, &hklen, &score, &snip, &snlen) == RINGBASE_OK) {
        if (score > prev) order_ok = 0;
        prev = score;
        CHECK(strlen(hk) == hklen && strlen(snip) == snlen && strstr(snip, "[") != NULL);
    }
    CHECK(order_ok);
    CHECK_RC(ringbase_hits_next(hits, &hk, &hklen, &score, NULL, NULL), RINGBASE_E_NOT_FOUND);
    CHECK_RC(ringbase_hits_next(hits, NULL, &hklen, &score, NULL, NULL), RINGBASE_E_INVALID);
    ringbase_hits_free(hits);
    CHECK_RC(ringbase_delete(c, K("q:3")), RINGBASE_OK);
    CHECK_RC(ringbase_search(c, K("enemies"), 0, &hits), RINGBASE_OK);
    CHECK(ringbase_hits_count(hits) == 0);
    ringbase_hits_free(hits);
    CHECK_RC(ringbase_search(c, K("  "), 0, &hits), RINGBASE_E_INVALID_QUERY);
    CHECK_RC(ringbase_search(c, NULL, 1, 0, &hits), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_fulltext(c, 0, NULL), RINGBASE_OK);
}

static void test_watch(ringbase_client *c) {
    ringbase_event ev;
    uint64_t head = 0;
    CHECK_RC(ringbase_next_event(c, &ev, 0), RINGBASE_E_INVALID); /* no watch yet */
    CHECK_RC(ringbase_watch(c, K("wt:"), -1, 1, &head), RINGBASE_OK);
    CHECK_RC(ringbase_next_event(c, &ev, 0), RINGBASE_E_AGAIN);
    CHECK_RC(ringbase_put(c, K("other:1"), K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_put(c, K("wt:1"), K("{\"a\":1}"), RINGBASE_JSON), RINGBASE_OK);
    ringbase_batch *b = NULL;
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("wt:2"), K("2"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_put(b, K("wt:3"), K("xyz"), RINGBASE_BYTES), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_OK);
    CHECK_RC(ringbase_delete(c, K("wt:1")), RINGBASE_OK);

    CHECK_RC(ringbase_next_event(c, &ev, 5000), RINGBASE_OK);
    CHECK(ev.type == RINGBASE_EVENT_CHANGE && ev.seq == head + 2); /* other:1 was head+1 */
    CHECK(strcmp(ev.key, "wt:1") == 0 && ev.key_len == 4 && ev.kind == RINGBASE_JSON);
    CHECK(ev.value_len == 7 && memcmp(ev.value, "{\"a\":1}", 7) == 0 && !ev.deleted);
    CHECK(ev.hlc > 0 && ev.replica_seq > 0 && ev.updated_at_ms > 0);
    CHECK_RC(ringbase_next_event(c, &ev, -1), RINGBASE_OK);
    uint64_t txn = ev.txn;
    CHECK(strcmp(ev.key, "wt:2") == 0 && ev.seq == head + 3 && txn == head + 3);
    CHECK_RC(ringbase_next_event(c, &ev, 5000), RINGBASE_OK);
    CHECK(strcmp(ev.key, "wt:3") == 0 && ev.txn == txn && ev.kind == RINGBASE_BYTES);
    CHECK(ev.value_len == 3 && memcmp(ev.value, "xyz", 3) == 0);
    CHECK_RC(ringbase_next_event(c, &ev, 5000), RINGBASE_OK);
    CHECK(strcmp(ev.key, "wt:1") == 0 && ev.deleted && ev.value == NULL && !ev.value_omitted);
    CHECK_RC(ringbase_next_event(c, &ev, 10), RINGBASE_E_AGAIN);
    CHECK_RC(ringbase_next_event(c, NULL, 0), RINGBASE_E_INVALID);

    /* Resume from a cursor: the batch and the delete again. */
    CHECK_RC(ringbase_watch(c, K("wt:"), (int64_t)(head + 2), 0, NULL), RINGBASE_OK);
    CHECK_RC(ringbase_next_event(c, &ev, 5000), RINGBASE_OK);
    CHECK(ev.seq == head + 3 && ev.value == NULL);
    CHECK_RC(ringbase_unwatch(c), RINGBASE_OK);
    CHECK_RC(ringbase_next_event(c, &ev, 0), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_watch(c, K("wt:"), (int64_t)(head + 1000), 0, NULL), RINGBASE_E_BAD_REQUEST);
    CHECK_RC(ringbase_watch(c, NULL, 3, -1, 0, NULL), RINGBASE_E_INVALID);
}

static void test_pipeline(ringbase_client *c) {
    ringbase_completion done;
    uint64_t t[6] = {0};
    size_t n = 0;

    CHECK_RC(ringbase_poll(c, &done), RINGBASE_E_AGAIN); /* nothing submitted */
    CHECK_RC(ringbase_in_flight(c, &n), RINGBASE_OK);
    CHECK(n == 0);
    CHECK_RC(ringbase_poll(c, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_in_flight(c, NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_get(c, K("k"), NULL), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_put(c, K("k"), K("1"), 9, &t[0]), RINGBASE_E_INVALID);
    CHECK_RC(ringbase_submit_delete(c, "\xff", 1, &t[0]), RINGBASE_E_INVALID_KEY);

    CHECK_RC(ringbase_submit_put(c, K("pipe:a"), K("{\"x\":1}"), RINGBASE_JSON, &t[0]), RINGBASE_OK);
    CHECK_RC(ringbase_submit_get(c, K("pipe:a"), &t[1]), RINGBASE_OK);
    CHECK_RC(ringbase_submit_get(c, K("pipe:missing"), &t[2]), RINGBASE_OK);
    CHECK_RC(ringbase_submit_put(c, K("pipe:b"), K("{bad"), RINGBASE_JSON, &t[3]), RINGBASE_OK);
    CHECK_RC(ringbase_submit_delete(c, K("pipe:a"), &t[4]), RINGBASE_OK);
    CHECK_RC(ringbase_submit_delete(c, K("pipe:a"), &t[5]), RINGBASE_OK);
    for (int i = 0; i < 6; i++) CHECK(t[i] != 0 && (i == 0 || t[i] > t[i - 1]));
    CHECK_RC(ringbase_in_flight(c, &n), RINGBASE_OK);
    CHECK(n == 6);

    const int want_op[6] = {RINGBASE_OP_PUT, RINGBASE_OP_GET, RINGBASE_OP_GET,
                            RINGBASE_OP_PUT, RINGBASE_OP_DELETE, RINGBASE_OP_DELETE};
    const int want_status[6] = {RINGBASE_OK, RINGBASE_OK, RINGBASE_E_NOT_FOUND,
                                RINGBASE_E_INVALID_JSON, RINGBASE_OK, RINGBASE_E_NOT_FOUND};
    for (int i = 0; i < 6; i++) {
        memset(&done, 0xab, sizeof done);
        CHECK_RC(poll_wait(c, &done, 10.0), RINGBASE_OK);
        CHECK(done.ticket == t[i]);
        CHECK(done.op == want_op[i]);
        CHECK_RC(done.status, want_status[i]);
        if (i == 1) {
            CHECK(done.value_len == 7 && memcmp(done.value, "{\"x\":1}", 7) == 0);
            CHECK(done.kind == RINGBASE_JSON);
        } else {
            CHECK(done.value == NULL && done.value_len == 0);
        }
        if (i == 3) CHECK(strstr(ringbase_last_error(c), "server") != NULL);
    }
    CHECK_RC(ringbase_poll(c, &done), RINGBASE_E_AGAIN);
    CHECK(done.ticket == 0 && done.value == NULL);
    CHECK_RC(ringbase_in_flight(c, &n), RINGBASE_OK);
    CHECK(n == 0);

    /* Blocking calls between submit and poll: the completion waits for poll. */
    uint64_t tk = 0;
    CHECK_RC(ringbase_submit_put(c, K("pipe:c"), K("3"), RINGBASE_JSON, &tk), RINGBASE_OK);
    void *v = NULL;
    CHECK_RC(ringbase_get(c, K("pipe:c"), &v, &n, NULL), RINGBASE_OK); /* read-your-writes */
    CHECK(n == 1 && memcmp(v, "3", 1) == 0);
    ringbase_free(v);
    CHECK_RC(ringbase_in_flight(c, &n), RINGBASE_OK);
    CHECK(n == 1);
    CHECK_RC(ringbase_poll(c, &done), RINGBASE_OK); /* already received: no wait */
    CHECK(done.ticket == tk && done.status == RINGBASE_OK && done.op == RINGBASE_OP_PUT);
    CHECK_RC(ringbase_poll(c, &done), RINGBASE_E_AGAIN);

    /* Many in flight: more than fit in the request ring at once. */
    enum { M = 2000 };
    int ok = 1;
    uint64_t first = 0;
    for (int i = 0; i < M; i++) {
        uint64_t ti = 0;
        if (ringbase_submit_get(c, K("pipe:c"), &ti) != RINGBASE_OK) ok = 0;
        if (i == 0) first = ti;
    }
    CHECK(ok);
    int got = 0;
    double deadline = now_s() + 30.0;
    while (got < M && now_s() < deadline) {
        int rc = ringbase_poll(c, &done);
        if (rc == RINGBASE_E_AGAIN) continue;
        if (rc != RINGBASE_OK || done.ticket != first + (uint64_t)got || done.status != RINGBASE_OK ||
            done.value_len != 1)
            ok = 0;
        got++;
    }
    CHECK(ok && got == M);
}

/* Handles made from a client stay safe after it is closed. */
static void test_close_order(const char *name) {
    ringbase_client *c = NULL;
    CHECK_RC(ringbase_connect(name, &c), RINGBASE_OK);
    if (!c) return;
    ringbase_batch *b = NULL;
    ringbase_list *it = NULL;
    uint64_t t = 0;
    CHECK_RC(ringbase_batch_begin(c, &b), RINGBASE_OK);
    CHECK_RC(ringbase_list_begin(c, NULL, 0, NULL, 0, 0, &it), RINGBASE_OK);
    CHECK_RC(ringbase_submit_get(c, K("pipe:c"), &t), RINGBASE_OK); /* abandoned */
    ringbase_close(c);
    const char *k;
    const void *v;
    size_t kl, vl;
    CHECK_RC(ringbase_list_next(it, &k, &kl, &v, &vl, NULL), RINGBASE_E_INVALID);
    CHECK(strstr(ringbase_last_error(NULL), "closed") != NULL);
    CHECK_RC(ringbase_batch_put(b, K("x"), K("1"), RINGBASE_JSON), RINGBASE_OK);
    CHECK_RC(ringbase_batch_commit(b), RINGBASE_E_INVALID);
    ringbase_list_free(it);
}

/* The server allows 8 sessions: the ninth is refused. */
static void test_refused(const char *name) {
    ringbase_client *cs[16] = {0};
    int refused = 0;
    for (int i = 0; i < 16 && !refused; i++) {
        int rc = ringbase_connect(name, &cs[i]);
        if (rc == RINGBASE_E_REFUSED) {
            refused = 1;
            CHECK(cs[i] == NULL);
            CHECK(strstr(ringbase_last_error(NULL), "refused") != NULL);
        } else {
            CHECK_RC(rc, RINGBASE_OK);
        }
    }
    CHECK(refused);
    for (int i = 0; i < 16; i++) ringbase_close(cs[i]);
}

/* Kill the server: every call returns DISCONNECTED, none hangs. */
/* A live server that does not answer (stopped with SIGSTOP) and a call timeout:
 * RINGBASE_E_TIMEOUT, then the handle only fails. */
static void test_timeout(const char *name, ringbase_client *other) {
    ringbase_status_info info;
    CHECK_RC(ringbase_status(other, &info), RINGBASE_OK);
    ringbase_options o = {0};
    o.name = name;
    o.call_timeout_ms = 200;
    ringbase_client *c = NULL;
    CHECK_RC(ringbase_connect_with(&o, &c), RINGBASE_OK);
    if (!c || info.pid <= 0) return;
    CHECK_RC(ringbase_ping(c), RINGBASE_OK);
    kill((pid_t)info.pid, SIGSTOP);
    pause_us(200000); /* the stop is asynchronous: let every server thread reach it */
    double t0 = now_s();
    CHECK_RC(ringbase_ping(c), RINGBASE_E_TIMEOUT);
    CHECK(now_s() - t0 < 10.0);
    CHECK(strstr(ringbase_last_error(c), "did not answer") != NULL);
    kill((pid_t)info.pid, SIGCONT);
    CHECK_RC(ringbase_ping(c), RINGBASE_E_DISCONNECTED);
    ringbase_close(c);
    CHECK_RC(ringbase_ping(other), RINGBASE_OK);
}

static void test_disconnected(ringbase_client *c) {
    ringbase_status_info info;
    CHECK_RC(ringbase_status(c, &info), RINGBASE_OK);
    uint64_t t = 0;
    CHECK_RC(ringbase_submit_get(c, K("pipe:c"), &t), RINGBASE_OK);
    ringbase_completion done;
    CHECK_RC(poll_wait(c, &done, 10.0), RINGBASE_OK);
    CHECK(info.pid > 0 && kill((pid_t)info.pid, 0) == 0);
    kill((pid_t)info.pid, SIGKILL);
    /* Keep one request in flight and poll until the death is noticed. */
    double deadline = now_s() + 20.0;
    int rc = RINGBASE_OK;
    while (now_s() < deadline) {
        size_t in_flight = 0;
        CHECK_RC(ringbase_in_flight(c, &in_flight), RINGBASE_OK);
        if (in_flight == 0 && (rc = ringbase_submit_get(c, K("pipe:c"), &t)) != RINGBASE_OK) break;
        rc = ringbase_poll(c, &done);
        if (rc != RINGBASE_OK && rc != RINGBASE_E_AGAIN) break;
        pause_us(1000);
    }
    CHECK_RC(rc, RINGBASE_E_DISCONNECTED);
    void *v = NULL;
    size_t n = 0;
    CHECK_RC(ringbase_get(c, K("pipe:c"), &v, &n, NULL), RINGBASE_E_DISCONNECTED);
    CHECK(v == NULL);
    CHECK_RC(ringbase_put(c, K("x"), K("1"), RINGBASE_JSON), RINGBASE_E_DISCONNECTED);
    CHECK_RC(ringbase_ping(c), RINGBASE_E_DISCONNECTED);
    CHECK_RC(ringbase_submit_get(c, K("x"), &t), RINGBASE_E_DISCONNECTED);
    CHECK(strstr(ringbase_last_error(c), "disconnected") != NULL);
}

/* A second client on the same server, from connect_or_spawn with the default lookup. */
static void test_second_client(const char *name) {
    ringbase_client *c2 = NULL;
    CHECK_RC(ringbase_connect_or_spawn(name, NULL, &c2), RINGBASE_OK);
    const void *v = NULL;
    size_t n = 0;
    CHECK_RC(ringbase_get_view(c2, K("batch:a"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == 1 && memcmp(v, "1", 1) == 0);
    ringbase_close(c2);
}

/* ringbase_connect_with: every option, and its argument errors. */
static void test_connect_with(const char *name, const char *server_bin) {
    ringbase_client *c = (ringbase_client *)&c;
    CHECK_RC(ringbase_connect_with(NULL, &c), RINGBASE_E_INVALID);
    CHECK(c == NULL);
    ringbase_options o = {0};
    o.name = name;
    CHECK_RC(ringbase_connect_with(&o, NULL), RINGBASE_E_INVALID);
    o.wait_mode = 7;
    CHECK_RC(ringbase_connect_with(&o, &c), RINGBASE_E_INVALID);
    CHECK(strstr(ringbase_last_error(NULL), "wait_mode") != NULL);

    /* Busy-poll, an explicit runtime dir, small rings, a call timeout. */
    o.wait_mode = RINGBASE_WAIT_BUSY_POLL;
    o.runtime_dir = env("RINGBASE_RUNTIME_DIR");
    o.request_ring = 4096;
    o.response_ring = 4096;
    o.call_timeout_ms = 5000;
    CHECK_RC(ringbase_connect_with(&o, &c), RINGBASE_OK);
    if (!c) return;
    for (int i = 0; i < 1000; i++) CHECK_RC(ringbase_ping(c), RINGBASE_OK);
    uint64_t max = 0;
    CHECK_RC(ringbase_max_value_len(c, &max), RINGBASE_OK);
    CHECK(max > 0 && max < 2048);
    static char big[3000];
    memset(big, 'x', sizeof big);
    CHECK_RC(ringbase_put(c, K("cw:big"), big, sizeof big, RINGBASE_BYTES), RINGBASE_E_TOO_LARGE);
    CHECK_RC(ringbase_put(c, K("cw:small"), K("42"), RINGBASE_JSON), RINGBASE_OK);
    const void *v = NULL;
    size_t n = 0;
    CHECK_RC(ringbase_get_view(c, K("cw:small"), &v, &n, NULL), RINGBASE_OK);
    CHECK(n == 2 && memcmp(v, "42", 2) == 0);
    ringbase_close(c);

    /* spawn = 1 finds the running server. */
    ringbase_options s = {0};
    s.name = name;
    s.spawn = 1;
    s.server_path = server_bin;
    c = NULL;
    CHECK_RC(ringbase_connect_with(&s, &c), RINGBASE_OK);
    CHECK_RC(ringbase_ping(c), RINGBASE_OK);
    ringbase_close(c);
}

int main(void) {
    const char *name = env("RINGBASE_TEST_NAME");
    const char *server_bin = env("RINGBASE_TEST_SERVER_BIN");
    env("RINGBASE_RUNTIME_DIR");

    test_static_functions();
    test_null_handles();
    test_connect_errors(server_bin);
    test_spawn(server_bin);

    ringbase_client *c = NULL;
    CHECK_RC(ringbase_connect(name, &c), RINGBASE_OK);
    if (!c) {
        fprintf(stderr, "cannot connect to %s: %s\n", name, ringbase_last_error(NULL));
        return 1;
    }
    test_key_value(c);
    test_batch(c);
    test_list(c);
    test_query(c);
    test_vectors(c);
    test_watch(c);
    test_pipeline(c);
    test_second_client(name);
    test_connect_with(name, server_bin);
    test_close_order(name);
    test_refused(name);
    test_timeout(name, c);
    test_disconnected(c);
    ringbase_close(c);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

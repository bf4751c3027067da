/*
 * hello.c: connect to the local Ringbase server (starting it if none runs), write a few
 * records, read one back, and list them.
 *
 *   cargo build -p ringbase-ffi -p ringbase-server
 *   cc -I ffi/include examples/c/hello.c -L target/debug -lringbase \
 *      -Wl,-rpath,$PWD/target/debug -o hello
 *   RINGBASE_SERVER=target/debug/ringbase ./hello [NAME]
 *
 * (or `pkg-config --cflags --libs ringbase` once libringbase is installed.)
 */
#include <ringbase.h>

#include <stdio.h>
#include <string.h>

static int fail(const char *what, int rc, const ringbase_client *c) {
    fprintf(stderr, "hello: %s: %s (%s)\n", what, ringbase_strerror(rc), ringbase_last_error(c));
    return 1;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : NULL; /* NULL = "default" */
    ringbase_client *c = NULL;
    /* NULL server path: $RINGBASE_SERVER, else `ringbase` next to this program, else PATH. */
    int rc = ringbase_connect_or_spawn(name, NULL, &c);
    if (rc != RINGBASE_OK) return fail("connect", rc, NULL);
    printf("connected (libringbase %s)\n", ringbase_version());

    static const char *const players[][2] = {
        {"player:1", "{\"name\":\"Ada\",\"hp\":100}"},
        {"player:2", "{\"name\":\"Grace\",\"hp\":85}"},
        {"player:3", "{\"name\":\"Linus\",\"hp\":70}"},
    };
    for (size_t i = 0; i < sizeof players / sizeof players[0]; i++) {
        const char *key = players[i][0], *json = players[i][1];
        rc = ringbase_put(c, key, strlen(key), json, strlen(json), RINGBASE_JSON);
        if (rc != RINGBASE_OK) return fail("put", rc, c);
    }

    /* A copy, owned by us: NUL-terminated, freed with ringbase_free. */
    void *value = NULL;
    size_t len = 0;
    int kind = 0;
    rc = ringbase_get(c, "player:1", 8, &value, &len, &kind);
    if (rc != RINGBASE_OK) return fail("get", rc, c);
    printf("player:1 = %s (%zu bytes, %s)\n", (const char *)value, len,
           kind == RINGBASE_JSON ? "json" : "bytes");
    ringbase_free(value);

    /* A missing key is RINGBASE_E_NOT_FOUND, not a failure of the session. */
    rc = ringbase_get(c, "player:9", 8, &value, &len, NULL);
    printf("player:9: %s\n", rc == RINGBASE_E_NOT_FOUND ? "not found" : ringbase_strerror(rc));

    /* List by prefix; the pointers are valid until the next ringbase_list_next. */
    ringbase_list *it = NULL;
    rc = ringbase_list_begin(c, "player:", 7, NULL, 0, 0, &it);
    if (rc != RINGBASE_OK) return fail("list", rc, c);
    const char *k;
    const void *v;
    size_t klen, vlen;
    while ((rc = ringbase_list_next(it, &k, &klen, &v, &vlen, NULL)) == RINGBASE_OK) {
        printf("  %.*s = %.*s\n", (int)klen, k, (int)vlen, (const char *)v);
    }
    ringbase_list_free(it);
    if (rc != RINGBASE_E_NOT_FOUND) return fail("list next", rc, c);

    ringbase_close(c);
    return 0;
}

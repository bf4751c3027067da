/*
 * capi_bench.c: the C side of the `capi` benchmark (benches/src/bin/capi.rs).
 *
 * Measures the round-trip time of ringbase_get (copy, then ringbase_free),
 * ringbase_get_view (zero-copy) and ringbase_put through libringbase, one call at a
 * time, with the same keys, values and sample counts as the Rust client's run of the
 * same bench. Each sample is two clock_gettime(CLOCK_MONOTONIC) reads around one
 * call, as Instant::now() does on the Rust side.
 *
 * The `capi` bench compiles and runs it; by hand:
 *
 *   cc -O2 -std=c11 -I ffi/include benches/c/capi_bench.c -L target/release \
 *      -Wl,-rpath,$PWD/target/release -lringbase -o capi_bench
 *   RINGBASE_RUNTIME_DIR=... ./capi_bench --name bench --records 10000 [--go-stdin]
 *
 * The records k000000 .. k<records-1> must exist (the bench preloads them). Protocol
 * with the bench: after connecting it prints "capi: ready <pid>"; with --go-stdin it
 * then waits for a line on stdin before measuring (so that the bench can start its CPU
 * meter); it prints "capi: result <json>" and, with --go-stdin, waits for stdin to
 * close before exiting. alarm(--limit seconds) bounds the whole run.
 *
 * Output JSON: {"api":"c","pid":..,"clock_read_ns":..,"cpu_ms":..,"value_len":..,
 * "ops":{"get":S,"get_view":S,"put":S}} where S is {"samples","min_ns","p50_ns",
 * "p99_ns","p999_ns","max_ns","mean_ns"} (nearest-rank percentiles, as in
 * benches/src/stats.rs).
 */
#define _POSIX_C_SOURCE 200809L

#include <ringbase.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Key-index streams: the same splitmix64 sequences as capi.rs. */
#define SEED_GET 1u
#define SEED_GET_VIEW 2u
#define SEED_PUT 3u

/* Width of a key buffer ("k" + digits + NUL). */
#define KEY_CAP 24

typedef struct {
    const char *name;
    unsigned long records;
    unsigned long warmup;
    unsigned long gets;
    unsigned long puts;
    unsigned long value_len;
    unsigned long limit;
    int go_stdin;
} config;

typedef struct {
    size_t samples;
    uint64_t min_ns, p50_ns, p99_ns, p999_ns, max_ns;
    double mean_ns;
} summary;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void die(const char *what, int rc, const ringbase_client *c) {
    fprintf(stderr, "capi_bench: %s: %s (%s)\n", what, ringbase_strerror(rc),
            ringbase_last_error(c));
    exit(1);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "capi_bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least q of all samples at or below it. */
static uint64_t percentile(const uint64_t *sorted, size_t n, double q) {
    double r = ceil(q * (double)n);
    size_t rank = r < 1.0 ? 1 : (size_t)r;
    if (rank > n) rank = n;
    return sorted[rank - 1];
}

static summary summarize(uint64_t *s, size_t n) {
    summary out = {0};
    if (n == 0) return out;
    qsort(s, n, sizeof *s, cmp_u64);
    long double sum = 0;
    for (size_t i = 0; i < n; i++) sum += (long double)s[i];
    out.samples = n;
    out.min_ns = s[0];
    out.p50_ns = percentile(s, n, 0.50);
    out.p99_ns = percentile(s, n, 0.99);
    out.p999_ns = percentile(s, n, 0.999);
    out.max_ns = s[n - 1];
    out.mean_ns = (double)(sum / (long double)n);
    return out;
}

static void print_summary(const char *op, const summary *s, int last) {
    printf("\"%s\":{\"samples\":%zu,\"min_ns\":%llu,\"p50_ns\":%llu,\"p99_ns\":%llu,"
           "\"p999_ns\":%llu,\"max_ns\":%llu,\"mean_ns\":%.1f}%s",
           op, s->samples, (unsigned long long)s->min_ns, (unsigned long long)s->p50_ns,
           (unsigned long long)s->p99_ns, (unsigned long long)s->p999_ns,
           (unsigned long long)s->max_ns, s->mean_ns, last ? "" : ",");
}

/* Key indexes for `n` calls from stream `seed`. */
static uint32_t *key_indexes(uint64_t seed, size_t n, unsigned long records) {
    uint32_t *idx = xmalloc(n * sizeof *idx);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) idx[i] = (uint32_t)(splitmix64(&st) % records);
    return idx;
}

/* Cost of one clock read, in ns (each sample contains one). */
static double clock_read_ns(void) {
    const int n = 1000000;
    uint64_t t0 = now_ns(), last = t0;
    for (int i = 0; i < n; i++) last = now_ns();
    return (double)(last - t0) / n;
}

static unsigned long parse_num(const char *flag, const char *v) {
    char *end = NULL;
    if (!v) {
        fprintf(stderr, "capi_bench: %s needs a value\n", flag);
        exit(2);
    }
    unsigned long x = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0') {
        fprintf(stderr, "capi_bench: %s: not a number: %s\n", flag, v);
        exit(2);
    }
    return x;
}

static config parse_args(int argc, char **argv) {
    config c = {"bench", 10000, 5000, 100000, 30000, 100, 300, 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--go-stdin")) {
            c.go_stdin = 1;
            continue;
        }
        if (!strcmp(a, "--name")) {
            if (!v) {
                fprintf(stderr, "capi_bench: --name needs a value\n");
                exit(2);
            }
            c.name = v;
        } else if (!strcmp(a, "--records")) c.records = parse_num(a, v);
        else if (!strcmp(a, "--warmup")) c.warmup = parse_num(a, v);
        else if (!strcmp(a, "--gets")) c.gets = parse_num(a, v);
        else if (!strcmp(a, "--puts")) c.puts = parse_num(a, v);
        else if (!strcmp(a, "--value-len")) c.value_len = parse_num(a, v);
        else if (!strcmp(a, "--limit")) c.limit = parse_num(a, v);
        else {
            fprintf(stderr, "capi_bench: unknown argument %s\n", a);
            exit(2);
        }
        i++;
    }
    if (c.records == 0 || c.records > UINT32_MAX || c.gets == 0 || c.puts == 0) {
        fprintf(stderr, "capi_bench: --records, --gets and --puts must be at least 1\n");
        exit(2);
    }
    return c;
}

/* Reads stdin up to a newline or EOF. */
static void wait_stdin_line(void) {
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n') {
    }
}

int main(int argc, char **argv) {
    config cfg = parse_args(argc, argv);
    /* Whatever happens, this process ends: SIGALRM's default action terminates it. */
    alarm((unsigned)cfg.limit);

    ringbase_client *c = NULL;
    int rc = ringbase_connect(cfg.name, &c);
    if (rc != RINGBASE_OK) die("connect", rc, NULL);

    /* Everything a sample needs is prepared before the clock runs. */
    char *keys = xmalloc(cfg.records * KEY_CAP);
    size_t *key_lens = xmalloc(cfg.records * sizeof *key_lens);
    for (unsigned long i = 0; i < cfg.records; i++) {
        int n = snprintf(keys + i * KEY_CAP, KEY_CAP, "k%06lu", i);
        key_lens[i] = (size_t)n;
    }
    unsigned char *value = xmalloc(cfg.value_len);
    for (unsigned long i = 0; i < cfg.value_len; i++) value[i] = (unsigned char)(i * 37 + 11);
    size_t n_get = cfg.warmup + cfg.gets, n_put = cfg.warmup + cfg.puts;
    uint32_t *idx_get = key_indexes(SEED_GET, n_get, cfg.records);
    uint32_t *idx_view = key_indexes(SEED_GET_VIEW, n_get, cfg.records);
    uint32_t *idx_put = key_indexes(SEED_PUT, n_put, cfg.records);
    uint64_t *s_get = xmalloc(n_get * sizeof *s_get);
    uint64_t *s_view = xmalloc(n_get * sizeof *s_view);
    uint64_t *s_put = xmalloc(n_put * sizeof *s_put);
    double clock_ns = clock_read_ns();

    printf("capi: ready %ld\n", (long)getpid());
    fflush(stdout);
    if (cfg.go_stdin) wait_stdin_line();

    struct timespec cpu0, cpu1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0);

    for (size_t i = 0; i < n_get; i++) {
        const char *k = keys + (size_t)idx_get[i] * KEY_CAP;
        size_t kl = key_lens[idx_get[i]];
        void *v = NULL;
        size_t vl = 0;
        int kind = 0;
        uint64_t t0 = now_ns();
        rc = ringbase_get(c, k, kl, &v, &vl, &kind);
        ringbase_free(v);
        uint64_t t1 = now_ns();
        if (rc != RINGBASE_OK) die("get", rc, c);
        if (vl != cfg.value_len) {
            fprintf(stderr, "capi_bench: get %s: %zu bytes, expected %lu\n", k, vl, cfg.value_len);
            return 1;
        }
        s_get[i] = t1 - t0;
    }

    for (size_t i = 0; i < n_get; i++) {
        const char *k = keys + (size_t)idx_view[i] * KEY_CAP;
        size_t kl = key_lens[idx_view[i]];
        const void *v = NULL;
        size_t vl = 0;
        int kind = 0;
        uint64_t t0 = now_ns();
        rc = ringbase_get_view(c, k, kl, &v, &vl, &kind);
        uint64_t t1 = now_ns();
        if (rc != RINGBASE_OK) die("get_view", rc, c);
        if (vl != cfg.value_len) {
            fprintf(stderr, "capi_bench: get_view %s: %zu bytes, expected %lu\n", k, vl,
                    cfg.value_len);
            return 1;
        }
        s_view[i] = t1 - t0;
    }

    for (size_t i = 0; i < n_put; i++) {
        const char *k = keys + (size_t)idx_put[i] * KEY_CAP;
        size_t kl = key_lens[idx_put[i]];
        if (cfg.value_len > 0) value[0] = (unsigned char)i; /* as capi.rs does */
        uint64_t t0 = now_ns();
        rc = ringbase_put(c, k, kl, value, cfg.value_len, RINGBASE_BYTES);
        uint64_t t1 = now_ns();
        if (rc != RINGBASE_OK) die("put", rc, c);
        s_put[i] = t1 - t0;
    }

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1);
    double cpu_ms = (double)(cpu1.tv_sec - cpu0.tv_sec) * 1e3 +
                    (double)(cpu1.tv_nsec - cpu0.tv_nsec) / 1e6;
    ringbase_close(c);

    summary g = summarize(s_get + cfg.warmup, cfg.gets);
    summary gv = summarize(s_view + cfg.warmup, cfg.gets);
    summary p = summarize(s_put + cfg.warmup, cfg.puts);
    printf("capi: result {\"api\":\"c\",\"pid\":%ld,\"clock_read_ns\":%.1f,\"cpu_ms\":%.1f,"
           "\"value_len\":%lu,\"ops\":{",
           (long)getpid(), clock_ns, cpu_ms, cfg.value_len);
    print_summary("get", &g, 0);
    print_summary("get_view", &gv, 0);
    print_summary("put", &p, 1);
    printf("}}\n");
    fflush(stdout);

    free(keys);
    free(key_lens);
    free(value);
    free(idx_get);
    free(idx_view);
    free(idx_put);
    free(s_get);
    free(s_view);
    free(s_put);
    if (cfg.go_stdin) {
        /* Stay alive (for the bench's CPU meter) until the bench closes our stdin. */
        while (getchar() != EOF) {
        }
    }
    return 0;
}

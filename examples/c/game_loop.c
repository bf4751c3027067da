/*
 * game_loop.c: a fixed-rate frame loop that uses Ringbase without ever blocking.
 *
 * Each frame submits a write of the player's state and a read of the world state,
 * then takes whatever completions are ready with ringbase_poll, which returns
 * RINGBASE_E_AGAIN instead of waiting. Answers usually arrive within the same frame;
 * when they do not, the frame goes on and picks them up later. Runs a bounded number
 * of frames, then drains what is still in flight and prints a summary.
 *
 *   RINGBASE_SERVER=target/debug/ringbase ./game_loop [NAME] [FRAMES]
 */
#define _POSIX_C_SOURCE 200809L
#include <ringbase.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HZ 60

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(const char *what, int rc, const ringbase_client *c) {
    fprintf(stderr, "game_loop: %s: %s (%s)\n", what, ringbase_strerror(rc), ringbase_last_error(c));
    return 1;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : NULL;
    int frames = argc > 2 ? atoi(argv[2]) : 3 * HZ;
    ringbase_client *c = NULL;
    int rc = ringbase_connect_or_spawn(name, NULL, &c);
    if (rc != RINGBASE_OK) return fail("connect", rc, NULL);

    const char *world = "world:weather";
    rc = ringbase_put(c, world, strlen(world), "\"sunny\"", 7, RINGBASE_JSON);
    if (rc != RINGBASE_OK) return fail("put", rc, c);

    long submitted = 0, completed = 0, errors = 0, reads = 0;
    size_t max_in_flight = 0;
    double worst_db_us = 0, x = 0, vx = 3.5;
    char weather[64] = "?";
    char buf[128];

    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (int frame = 0; frame < frames; frame++) {
        /* --- simulate --- */
        x += vx / HZ;

        /* --- database work for this frame: submit, then take what is ready --- */
        double t0 = now_s();
        uint64_t ticket;
        int n = snprintf(buf, sizeof buf, "{\"frame\":%d,\"x\":%.3f}", frame, x);
        rc = ringbase_submit_put(c, "player:1:state", 14, buf, (size_t)n, RINGBASE_JSON, &ticket);
        if (rc != RINGBASE_OK) return fail("submit_put", rc, c);
        submitted++;
        if (frame % HZ == HZ - 1) { /* once a second the weather changes */
            const char *w = (frame / HZ) % 2 ? "\"sunny\"" : "\"rain\"";
            rc = ringbase_submit_put(c, world, strlen(world), w, strlen(w), RINGBASE_JSON, &ticket);
            if (rc != RINGBASE_OK) return fail("submit_put", rc, c);
            submitted++;
        }
        rc = ringbase_submit_get(c, world, strlen(world), &ticket);
        if (rc != RINGBASE_OK) return fail("submit_get", rc, c);
        submitted++;

        size_t in_flight = 0;
        ringbase_in_flight(c, &in_flight);
        if (in_flight > max_in_flight) max_in_flight = in_flight;

        ringbase_completion done;
        while ((rc = ringbase_poll(c, &done)) == RINGBASE_OK) {
            completed++;
            if (done.status != RINGBASE_OK) {
                errors++;
                fprintf(stderr, "ticket %llu: %s (%s)\n", (unsigned long long)done.ticket,
                        ringbase_strerror(done.status), ringbase_last_error(c));
            } else if (done.op == RINGBASE_OP_GET) {
                /* done.value is valid until the next call on c: copy it now. */
                size_t len = done.value_len < sizeof weather - 1 ? done.value_len : sizeof weather - 1;
                memcpy(weather, done.value, len);
                weather[len] = '\0';
                reads++;
            }
        }
        if (rc != RINGBASE_E_AGAIN) return fail("poll", rc, c);
        double db_us = (now_s() - t0) * 1e6;
        if (db_us > worst_db_us) worst_db_us = db_us;

        /* --- render, then wait for the next frame tick --- */
        if (frame % HZ == 0) printf("frame %3d: x=%.2f weather=%s\n", frame, x, weather);
        next.tv_nsec += 1000000000L / HZ;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }

    /* Drain what is still in flight (bounded: at most 5 s). */
    double deadline = now_s() + 5.0;
    ringbase_completion done;
    while (completed < submitted && now_s() < deadline) {
        rc = ringbase_poll(c, &done);
        if (rc == RINGBASE_OK) {
            completed++;
            if (done.status != RINGBASE_OK) errors++;
        } else if (rc != RINGBASE_E_AGAIN) {
            return fail("poll", rc, c);
        } else {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
    }
    printf("%d frames: %ld submitted, %ld completed, %ld reads, %ld errors, "
           "max %zu in flight, worst database time in a frame %.0f us\n",
           frames, submitted, completed, reads, errors, max_in_flight, worst_db_us);
    ringbase_close(c);
    return completed == submitted && errors == 0 ? 0 : 1;
}

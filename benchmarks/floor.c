/* touchfile's native core with no Python around it, against the cheapest
 * thing of each kind, in plain C: what touchfile's Python adds, and what no
 * wrapper of this core can go below. Built with the core itself:
 *
 *   cc -O2 -pthread -I_native -DTF_VERSION='"floor"' benchmarks/floor.c _native/touchfile.c
 *
 *   floor uncontended PATH BATCHES OPS  a flock() pair; tf_try() (the lock and
 *                                       the path check) and an unlock
 *   floor handoff PATH N                another process releases: a blocking
 *                                       flock(); tf_wait() (deadline 30 s)
 *   floor cancel PATH N                 pthread_cond_wait() woken by
 *                                       pthread_cond_signal(); tf_wait() ended
 *                                       by tf_cancel() from another thread
 *   floor deadline PATH N MS            clock_nanosleep() to the deadline;
 *                                       tf_wait() ended by its deadline
 *
 * Each prints one line of JSON, {"series": [seconds, ...], ...}, the cheapest
 * thing first. In cancel and deadline the lock is held throughout by another
 * descriptor of this process, so every wait is ended, never granted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "touchfile.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) == EINTR)
        ;
}

static double jitter(double base, double span)
{
    return base + span * (double)rand() / RAND_MAX;
}

static void *xcalloc(int n)
{
    void *p = calloc((size_t)n, sizeof(double));
    if (p == NULL)
        perror("calloc"), exit(1);
    return p;
}

static void print_series(const char *name, const double *xs, int n, int last)
{
    printf("\"%s\": [", name);
    for (int i = 0; i < n; i++)
        printf(i ? ", %.9g" : "%.9g", xs[i]);
    printf(last ? "]}\n" : "], ");
}

static void fail(const char *what)
{
    fprintf(stderr, "floor: %s\n", what);
    exit(1);
}

/* The lock file, opened as touchfile opens it, with the identity it checks. */
static const char *path;
static struct stat ident;

static int open_lock(void)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &ident) != 0)
        perror(path), exit(1);
    return fd;
}

static int core_wait(tf_waiter *w, int fd)
{
    return tf_wait(w, fd, LOCK_EX, 0, 0, path, (unsigned long long)ident.st_dev,
                   (unsigned long long)ident.st_ino);
}

/* ---- uncontended ------------------------------------------------------------- */

static int uncontended(int batches, int ops)
{
    int fd = open_lock();
    double *pair = xcalloc(batches), *core = xcalloc(batches);
    for (int b = -1; b < batches; b++) { /* b = -1: the warm-up */
        double t0 = now();
        for (int i = 0; i < ops; i++) {
            flock(fd, LOCK_EX | LOCK_NB);
            flock(fd, LOCK_UN);
        }
        double t1 = now();
        for (int i = 0; i < ops; i++) {
            if (tf_try(fd, LOCK_EX, path, (unsigned long long)ident.st_dev,
                       (unsigned long long)ident.st_ino) != TF_OK)
                fail("tf_try() did not take a free lock");
            flock(fd, LOCK_UN);
        }
        double t2 = now();
        if (b >= 0) {
            pair[b] = (t1 - t0) / ops;
            core[b] = (t2 - t1) / ops;
        }
    }
    printf("{");
    print_series("flock() pair", pair, batches, 0);
    print_series("touchfile's core: tf_try() and unlock", core, batches, 1);
    return 0;
}

/* ---- handoff ------------------------------------------------------------------ */

/* A child holds the lock, releases it 20-30 ms after each request, and
 * writes down when, in shared memory; the parent's waiter holds it next. */
static int handoff(int n)
{
    volatile double *released = mmap(NULL, sizeof(double), PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int ask[2], held[2];
    if (released == MAP_FAILED || pipe(ask) != 0 || pipe(held) != 0)
        fail("no shared memory or pipe");
    pid_t child = fork();
    if (child == 0) {
        int fd = open_lock();
        char c;
        close(ask[1]);
        close(held[0]);
        while (read(ask[0], &c, 1) == 1) {
            flock(fd, LOCK_EX);
            if (write(held[1], "h", 1) != 1)
                _exit(1);
            sleep_s(jitter(0.02, 0.01));
            *released = now();
            flock(fd, LOCK_UN);
        }
        _exit(0);
    }
    close(ask[0]);
    close(held[1]);
    int fd = open_lock();
    double *raw = xcalloc(n), *core = xcalloc(n);
    for (int i = -1; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            char c;
            if (write(ask[1], "g", 1) != 1 || read(held[0], &c, 1) != 1)
                fail("the holder process is gone");
            if (k == 0) {
                if (flock(fd, LOCK_EX) != 0)
                    fail("flock() failed");
            } else {
                tf_waiter *w = tf_waiter_new(now() + 30);
                int rc = core_wait(w, fd);
                tf_waiter_free(w);
                if (rc != TF_OK)
                    fail("tf_wait() did not take the released lock");
            }
            double t = now();
            flock(fd, LOCK_UN);
            if (i >= 0)
                (k == 0 ? raw : core)[i] = t - *released;
        }
    }
    close(ask[1]);
    waitpid(child, NULL, 0);
    printf("{");
    print_series("blocking flock()", raw, n, 0);
    print_series("touchfile's core: tf_wait()", core, n, 1);
    return 0;
}

/* ---- cancel and deadline ---------------------------------------------------- */

static int waiter_fd;
static tf_waiter *waiter;
static double ended_at;
static int ended_rc;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready, woken;

static void *core_waiter(void *arg)
{
    (void)arg;
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    ended_rc = core_wait(waiter, waiter_fd);
    ended_at = now();
    return NULL;
}

static void *cond_waiter(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    while (!woken)
        pthread_cond_wait(&cond, &mu);
    pthread_mutex_unlock(&mu);
    ended_at = now();
    return NULL;
}

static void start(pthread_t *t, void *(*fn)(void *))
{
    ready = 0;
    if (pthread_create(t, NULL, fn, NULL) != 0)
        fail("no thread");
    while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        sleep_s(0.0001);
}

static int cancel(int n)
{
    double *wake = xcalloc(n), *core = xcalloc(n);
    for (int i = -1; i < n; i++) {
        pthread_t t;
        woken = 0;
        start(&t, cond_waiter);
        sleep_s(jitter(0.002, 0.001));
        double t0 = now();
        pthread_mutex_lock(&mu);
        woken = 1;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&mu);
        pthread_join(t, NULL);
        if (i >= 0)
            wake[i] = ended_at - t0;

        waiter = tf_waiter_new(now() + 30);
        start(&t, core_waiter);
        sleep_s(jitter(0.002, 0.001)); /* (a cancel that came first would be kept) */
        t0 = now();
        tf_cancel(waiter, TF_CANCELLED);
        pthread_join(t, NULL);
        tf_waiter_free(waiter);
        if (ended_rc != TF_CANCELLED)
            fail("tf_wait() did not end as cancelled");
        if (i >= 0)
            core[i] = ended_at - t0;
    }
    printf("{");
    print_series("pthread_cond_wait() woken by pthread_cond_signal()", wake, n, 0);
    print_series("touchfile's core: tf_wait() ended by tf_cancel()", core, n, 1);
    return 0;
}

static int deadline(int n, double timeout)
{
    double *nap = xcalloc(n), *core = xcalloc(n);
    for (int i = -1; i < n; i++) {
        double at = now() + timeout;
        struct timespec ts = {(time_t)at, (long)((at - (double)(time_t)at) * 1e9)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        if (i >= 0)
            nap[i] = now() - at;

        at = now() + timeout;
        waiter = tf_waiter_new(at);
        ended_rc = core_wait(waiter, waiter_fd);
        double late = now() - at;
        tf_waiter_free(waiter);
        if (ended_rc != TF_DEADLINE)
            fail("tf_wait() did not end at its deadline");
        if (i >= 0)
            core[i] = late;
    }
    printf("{");
    print_series("clock_nanosleep()", nap, n, 0);
    print_series("touchfile's core: tf_wait() ended by its deadline", core, n, 1);
    return 0;
}

int main(int argc, char **argv)
{
    const char *usage = "usage: floor uncontended|handoff|cancel|deadline PATH ...";
    if (argc < 4)
        fail(usage);
    const char *mode = argv[1];
    path = argv[2];
    if (strcmp(mode, "uncontended") == 0 && argc == 5)
        return uncontended(atoi(argv[3]), atoi(argv[4]));
    if (strcmp(mode, "handoff") == 0 && argc == 4)
        return handoff(atoi(argv[3]));

    int holder = open_lock();
    waiter_fd = open_lock();
    if (flock(holder, LOCK_EX) != 0)
        perror(path), exit(1);
    if (strcmp(mode, "cancel") == 0 && argc == 4)
        return cancel(atoi(argv[3]));
    if (strcmp(mode, "deadline") == 0 && argc == 5)
        return deadline(atoi(argv[3]), atof(argv[4]) / 1000);
    fail(usage);
    return 2;
}

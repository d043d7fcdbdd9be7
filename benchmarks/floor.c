/* The physical floors, in plain C: what touchfile's own steps cost with no
 * Python around them, measured in the same run as the figures.
 *
 *   floor uncontended PATH BATCHES OPS   flock() pair, and the pair with the
 *                                        path check (stat(), dev and ino)
 *   floor cancel PATH N                  a thread blocked in flock() ended by
 *                                        pthread_kill(), and one blocked in
 *                                        pthread_cond_wait() woken by a signal
 *   floor deadline PATH N MS             a thread blocked in flock() ended by
 *                                        its own timer at the deadline, and
 *                                        clock_nanosleep() to the deadline
 *
 * Each prints one line of JSON: {"series name": [seconds, ...], ...}. The
 * lock is held throughout by another descriptor of this process, so every
 * blocking flock() waits until it is interrupted. Build: cc -O2 -pthread.
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
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void print_series(const char *name, const double *xs, int n, int last)
{
    printf("\"%s\": [", name);
    for (int i = 0; i < n; i++)
        printf(i ? ", %.9g" : "%.9g", xs[i]);
    printf(last ? "]}\n" : "], ");
}

static void on_signal(int sig) { (void)sig; }

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- uncontended ----------------------------------------------------------- */

static int uncontended(const char *path, int batches, int ops)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return perror(path), 1;
    double *pair = calloc((size_t)batches, sizeof *pair);
    double *checked = calloc((size_t)batches, sizeof *checked);
    for (int b = -1; b < batches; b++) { /* b = -1: the warm-up */
        double t0 = now();
        for (int i = 0; i < ops; i++) {
            flock(fd, LOCK_EX | LOCK_NB);
            flock(fd, LOCK_UN);
        }
        double t1 = now();
        for (int i = 0; i < ops; i++) {
            struct stat now_st;
            flock(fd, LOCK_EX | LOCK_NB);
            if (stat(path, &now_st) != 0 || now_st.st_ino != st.st_ino || now_st.st_dev != st.st_dev)
                return fprintf(stderr, "%s: replaced\n", path), 1;
            flock(fd, LOCK_UN);
        }
        double t2 = now();
        if (b >= 0) {
            pair[b] = (t1 - t0) / ops;
            checked[b] = (t2 - t1) / ops;
        }
    }
    printf("{");
    print_series("flock() pair", pair, batches, 0);
    print_series("flock() pair + path check", checked, batches, 1);
    return 0;
}

/* ---- cancel and deadline ---------------------------------------------------- */

static int waiter_fd;
static double deadline_at; /* > 0: the waiter arms its own timer for it */
static double ended_at;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int ready, woken;

static void *flock_waiter(void *arg)
{
    (void)arg;
    timer_t timer;
    if (deadline_at > 0) {
        struct sigevent ev;
        memset(&ev, 0, sizeof ev);
        ev.sigev_notify = SIGEV_THREAD_ID;
        ev.sigev_signo = SIGURG;
        ev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        timer_create(CLOCK_MONOTONIC, &ev, &timer);
        struct itimerspec it;
        memset(&it, 0, sizeof it);
        it.it_value.tv_sec = (time_t)deadline_at;
        it.it_value.tv_nsec = (long)((deadline_at - (double)(time_t)deadline_at) * 1e9);
        it.it_interval.tv_nsec = 1000000; /* again every 1 ms, as touchfile's does */
        timer_settime(timer, TIMER_ABSTIME, &it, NULL);
    }
    __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    int rc = flock(waiter_fd, LOCK_EX);
    ended_at = now();
    if (deadline_at > 0)
        timer_delete(timer);
    if (rc == 0 || errno != EINTR)
        fprintf(stderr, "flock() did not end with EINTR\n"), exit(1);
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
    pthread_create(t, NULL, fn, NULL);
    while (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE))
        sleep_s(0.0001);
}

static int cancel(int n)
{
    double *kill = calloc((size_t)n, sizeof *kill), *wake = calloc((size_t)n, sizeof *wake);
    for (int i = -1; i < n; i++) {
        pthread_t t;
        deadline_at = 0;
        start(&t, flock_waiter);
        sleep_s(0.002 + 0.001 * (double)rand() / RAND_MAX);
        double t0 = now();
        pthread_kill(t, SIGURG);
        pthread_join(t, NULL);
        if (i >= 0)
            kill[i] = ended_at - t0;

        woken = 0;
        start(&t, cond_waiter);
        sleep_s(0.002 + 0.001 * (double)rand() / RAND_MAX);
        t0 = now();
        pthread_mutex_lock(&mu);
        woken = 1;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&mu);
        pthread_join(t, NULL);
        if (i >= 0)
            wake[i] = ended_at - t0;
    }
    printf("{");
    print_series("flock() ended by pthread_kill()", kill, n, 0);
    print_series("pthread_cond_wait() woken by pthread_cond_signal()", wake, n, 1);
    return 0;
}

static int deadline(int n, double timeout)
{
    double *timer = calloc((size_t)n, sizeof *timer), *nap = calloc((size_t)n, sizeof *nap);
    for (int i = -1; i < n; i++) {
        pthread_t t;
        double at = now() + timeout;
        deadline_at = at;
        start(&t, flock_waiter); /* its timer is armed before it is ready */
        pthread_join(t, NULL);
        if (i >= 0)
            timer[i] = ended_at - at;

        at = now() + timeout;
        struct timespec ts = {(time_t)at, (long)((at - (double)(time_t)at) * 1e9)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        if (i >= 0)
            nap[i] = now() - at;
    }
    printf("{");
    print_series("flock() ended by its own timer", timer, n, 0);
    print_series("clock_nanosleep()", nap, n, 1);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4)
        return fprintf(stderr, "usage: floor uncontended|cancel|deadline PATH ...\n"), 2;
    const char *mode = argv[1], *path = argv[2];
    if (strcmp(mode, "uncontended") == 0 && argc == 5)
        return uncontended(path, atoi(argv[3]), atoi(argv[4]));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: the signal ends flock() with EINTR */
    sigaction(SIGURG, &sa, NULL);
    int holder = open(path, O_RDONLY | O_CLOEXEC);
    waiter_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (holder < 0 || waiter_fd < 0 || flock(holder, LOCK_EX) != 0)
        return perror(path), 1;
    if (strcmp(mode, "cancel") == 0 && argc == 4)
        return cancel(atoi(argv[3]));
    if (strcmp(mode, "deadline") == 0 && argc == 5)
        return deadline(atoi(argv[3]), atof(argv[4]) / 1000);
    return fprintf(stderr, "usage: floor uncontended|cancel|deadline PATH ...\n"), 2;
}

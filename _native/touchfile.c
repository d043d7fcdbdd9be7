/* touchfile's native core: a flock() wait that blocks in the kernel and can
 * be ended from any thread by a signal sent to exactly the waiting thread.
 *
 * Why C: CPython retries a flock() interrupted by a signal (PEP 475) and runs
 * Python signal handlers only in the main thread, so neither fcntl.flock()
 * nor signal.pthread_kill() can end a wait in a worker thread.
 *
 * How: the interrupt signal gets a no-op handler installed without
 * SA_RESTART, so a blocked flock() returns EINTR when the signal arrives.
 * A deadline is a kernel timer of the wait's own (timer_create() with
 * SIGEV_THREAD_ID), which sends the signal to exactly the waiting thread at
 * the deadline, and again every TIMER_RESEND_NS until the thread has left
 * its wait: one wake-up, the waiter's. A cancel is a pthread_kill() from the
 * cancelling thread, and one scheduler thread re-sends it (a min-heap of
 * due times) until the waiter acknowledges by leaving its wait; it also
 * keeps a deadline whose timer could not be made. All waiter state is
 * guarded by one mutex; a signal is sent only while that mutex is held and
 * the waiter is still inside tf_wait(), so pthread_kill() never sees a
 * thread that has left (or ended). */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "touchfile.h"

#ifndef TF_VERSION
#error "build with -DTF_VERSION=\"x.y.z\" (see _native/build_ffi.py)"
#endif

#define NOT_QUEUED SIZE_MAX
/* A signal can land after the waiter checked its state but before flock()
 * starts; the handler then runs in user space and the wait would block on.
 * The scheduler re-sends, 50 us after the first send and backing off to
 * 6.4 ms, until the waiter has left tf_wait(). */
#define RESEND_FIRST_NS 50000LL
#define RESEND_MAX_SHIFT 7
/* A deadline's timer re-sends at a fixed interval (a timer cannot back
 * off), so not as often: each expiry is a timer interrupt, which on a VM
 * costs about what a 50 us interval leaves (a thread receiving one every
 * 50 us ran at half speed here; every 1 ms, 2% slower). A thread that
 * cannot run at once after its deadline, on a busy machine, would otherwise
 * have its own timer take the CPU it waits for. */
#define TIMER_RESEND_NS 1000000LL
#ifndef sigev_notify_thread_id /* glibc before 2.35 names it only this way */
#define sigev_notify_thread_id _sigev_un._tid
#endif
/* Deadlines further out than this are no deadline (keeps int64 ns safe). */
#define MAX_DEADLINE_S 4.0e9

enum { IDLE = 0, WAITING = 1 };

struct tf_waiter {
    pthread_t thread;       /* valid while state == WAITING */
    int state;
    int reason;             /* 0, or why the wait must end */
    unsigned resends;       /* signals sent so far in this wait */
    unsigned long epoch;    /* fork generation in which thread is valid */
    int64_t deadline;       /* ns on CLOCK_MONOTONIC, or INT64_MAX */
    int64_t due;            /* when the scheduler next acts on it */
    size_t slot;            /* index in the heap, or NOT_QUEUED */
};
/* tf_waiter_init() promises to work in memory aligned for an int64_t. */
_Static_assert(_Alignof(struct tf_waiter) <= _Alignof(int64_t), "tf_waiter needs more alignment");

/* What the scheduler sleeps on (CLOCK_MONOTONIC). Each one is initialised
 * once and never destroyed. A forked child must not use one that its
 * parent's scheduler was waiting on at fork(): that waiter does not exist in
 * the child, yet glibc would wait for it to leave before a later signal.
 * Initialising it again is undefined (POSIX), so such a child starts a new
 * one and keeps the old one reachable (prev) without touching it. */
struct wake {
    pthread_cond_t cond;
    struct wake *prev;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct wake first_wake;          /* initialised at load */
static struct wake *wake = &first_wake;
static int wake_inherited;              /* in a child: wake may have a phantom waiter */
static int scheduler_running;
static unsigned long epoch;             /* bumped in a forked child */
static int signo = SIGURG;
static tf_waiter **heap;
static size_t heap_len, heap_cap;
static size_t waiting;                  /* waiters inside tf_wait(); the heap has room for all */
static long long test_delay_ns;         /* tf_set_test_delay() */

const char *tf_version(void) { return TF_VERSION; }

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- the interrupt signal ------------------------------------------------ */

/* Does nothing: its only job is to make the interrupted flock() return EINTR
 * (no SA_RESTART). It touches no state, so it is async-signal-safe and keeps
 * errno as it was. */
static void on_interrupt(int sig) { (void)sig; }

int tf_set_signal(int sig)
{
    if (sig <= 0 || sig >= NSIG)
        return -EINVAL;
    pthread_mutex_lock(&mu);
    signo = sig;
    pthread_mutex_unlock(&mu);
    return 0;
}

/* With mu held. Ours, or free to take (SIG_DFL): install the no-op handler
 * without SA_RESTART. Anything else belongs to someone else (a Python
 * handler, a Go runtime, a handler with SA_RESTART) and is left alone: the
 * caller falls back to polling rather than block where no signal can reach
 * it. SIG_IGN too is the application's choice: replacing it would let any
 * process of the same user (or out-of-band socket data, with F_SETOWN) make
 * blocking calls in other threads fail with EINTR. Checked before every
 * wait, so a handler that appears later is noticed at the next wait. */
static int ensure_handler(void)
{
    struct sigaction cur, ours;
    if (sigaction(signo, NULL, &cur) != 0)
        return -errno;
    if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == on_interrupt)
        return (cur.sa_flags & SA_RESTART) ? TF_NO_HANDLER : TF_OK;
    if ((cur.sa_flags & SA_SIGINFO) || cur.sa_handler != SIG_DFL)
        return TF_NO_HANDLER;
    memset(&ours, 0, sizeof ours);
    ours.sa_handler = on_interrupt;
    sigemptyset(&ours.sa_mask);
    ours.sa_flags = 0; /* no SA_RESTART: that is the whole point */
    if (sigaction(signo, &ours, NULL) != 0)
        return -errno;
    return TF_OK;
}

int tf_handler_ready(void)
{
    pthread_mutex_lock(&mu);
    int rc = ensure_handler();
    pthread_mutex_unlock(&mu);
    return rc == TF_OK;
}

/* ---- the deadline heap (all with mu held) -------------------------------- */

static void heap_set(size_t i, tf_waiter *w)
{
    heap[i] = w;
    w->slot = i;
}

static void sift_up(size_t i)
{
    tf_waiter *w = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent]->due <= w->due)
            break;
        heap_set(i, heap[parent]);
        i = parent;
    }
    heap_set(i, w);
}

static void sift_down(size_t i)
{
    tf_waiter *w = heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= heap_len)
            break;
        if (child + 1 < heap_len && heap[child + 1]->due < heap[child]->due)
            child++;
        if (w->due <= heap[child]->due)
            break;
        heap_set(i, heap[child]);
        i = child;
    }
    heap_set(i, w);
}

/* Room for every waiter in tf_wait(), reserved on entry, so that queueing a
 * deadline or a re-send can never fail (a lost re-send could hang a wait). */
static int heap_reserve(size_t n)
{
    if (n <= heap_cap)
        return 0;
    size_t cap = heap_cap ? heap_cap : 64;
    while (cap < n)
        cap *= 2;
    tf_waiter **grown = realloc(heap, cap * sizeof *grown);
    if (grown == NULL)
        return -ENOMEM;
    heap = grown;
    heap_cap = cap;
    return 0;
}

static void heap_push(tf_waiter *w)
{
    heap_set(heap_len++, w);
    sift_up(w->slot);
    /* A new earliest event: the scheduler may be sleeping until a later one. */
    if (heap[0] == w)
        pthread_cond_signal(&wake->cond);
}

static void heap_remove(tf_waiter *w)
{
    size_t i = w->slot;
    w->slot = NOT_QUEUED;
    tf_waiter *last = heap[--heap_len];
    if (i == heap_len)
        return;
    heap_set(i, last);
    sift_down(i);
    sift_up(last->slot);
}

/* ---- interrupting a waiter ----------------------------------------------- */

/* With mu held, w WAITING and w->reason set: signal exactly w's thread, and
 * queue a re-send in case the signal landed before flock() started. Sending
 * with mu held is what makes w->thread safe to use: w cannot leave tf_wait()
 * (which takes mu) until we are done. */
static void interrupt(tf_waiter *w, int64_t now)
{
    if (w->epoch != epoch)
        return; /* a thread of the parent process: it does not exist here */
    pthread_kill(w->thread, signo);
    unsigned shift = w->resends < RESEND_MAX_SHIFT ? w->resends : RESEND_MAX_SHIFT;
    w->resends++;
    if (w->slot != NOT_QUEUED)
        heap_remove(w);
    w->due = now + (RESEND_FIRST_NS << shift);
    heap_push(w);
}

static void *scheduler_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        if (heap_len == 0) {
            pthread_cond_wait(&wake->cond, &mu);
            continue;
        }
        tf_waiter *w = heap[0];
        int64_t now = now_ns();
        if (w->due > now) {
            struct timespec ts = {(time_t)(w->due / 1000000000LL),
                                  (long)(w->due % 1000000000LL)};
            pthread_cond_timedwait(&wake->cond, &mu, &ts);
            continue;
        }
        heap_remove(w);
        if (w->reason == 0)
            w->reason = TF_DEADLINE;
        interrupt(w, now);
    }
    return NULL;
}

/* With mu held. The scheduler blocks every signal, so that none meant for
 * Python (SIGINT, ...) is delivered to a thread that cannot act on it. */
static void init_wake(struct wake *w)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &attr);
    pthread_condattr_destroy(&attr);
}

static int ensure_scheduler(void)
{
    if (scheduler_running)
        return 0;
    if (wake_inherited) {
        struct wake *fresh = calloc(1, sizeof *fresh);
        if (fresh == NULL)
            return -ENOMEM;
        init_wake(fresh);
        fresh->prev = wake;
        wake = fresh;
        wake_inherited = 0;
    }

    sigset_t all, old;
    sigfillset(&all);
    /* Not the synchronous ones: a fault in the scheduler must reach its
     * handler (faulthandler, a sanitizer), not kill the process silently. */
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, scheduler_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -rc;
    pthread_detach(tid);
    scheduler_running = 1;
    return 0;
}

/* ---- fork ----------------------------------------------------------------- */

/* The child has one thread: no scheduler, and every waiter that was WAITING
 * belongs to a thread that does not exist there (epoch tells them apart). */
static void before_fork(void) { pthread_mutex_lock(&mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&mu); }
static void after_fork_child(void)
{
    for (size_t i = 0; i < heap_len; i++)
        heap[i]->slot = NOT_QUEUED;
    heap_len = 0;
    waiting = 0;
    wake_inherited = wake_inherited || scheduler_running;
    scheduler_running = 0;
    epoch++;
    pthread_mutex_unlock(&mu);
}

/* At load time, before any entry point can take mu: the first wake, and the
 * fork handlers (a fork while mu is held without them would leave the
 * child's mu locked for ever). */
__attribute__((constructor)) static void load(void)
{
    init_wake(&first_wake);
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* ---- the deadline's timer ---------------------------------------------------- */

/* A timer that sends the interrupt signal to the calling thread at deadline
 * (ns on CLOCK_MONOTONIC), then every TIMER_RESEND_NS: the re-send covers a
 * signal that lands before the blocking call starts (its handler then runs
 * in user space, and the call would block on). 0, or -errno (too many
 * timers, say: the scheduler keeps the deadline instead). */
static int arm_timer(timer_t *timer, int64_t deadline)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = signo;
    ev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &ev, timer) != 0)
        return -errno;
    struct itimerspec when = {
        .it_interval = {0, (long)TIMER_RESEND_NS},
        .it_value = {(time_t)(deadline / 1000000000LL), (long)(deadline % 1000000000LL)},
    };
    if (timer_settime(*timer, TIMER_ABSTIME, &when, NULL) != 0) {
        int err = errno;
        timer_delete(*timer);
        return -err;
    }
    return 0;
}

/* For tests: sleep ns between arming a wait's deadline and its blocking
 * call, so that a deadline's signal lands before the call starts. */
void tf_set_test_delay(long long ns)
{
    pthread_mutex_lock(&mu);
    test_delay_ns = ns;
    pthread_mutex_unlock(&mu);
}

/* ---- locking ---------------------------------------------------------------- */

/* One lock operation: op is LOCK_SH, LOCK_EX or LOCK_UN, with LOCK_NB for a
 * try, and TF_OFD for an open file description's record lock on [start,
 * start + len) (len 0: to the end of the file, however far it grows). */
static int lock_op(int fd, int op, long long start, long long len)
{
    if (!(op & TF_OFD))
        return flock(fd, op);
    struct flock arg;
    memset(&arg, 0, sizeof arg); /* l_pid must be 0 for F_OFD_* */
    arg.l_type = (op & LOCK_EX) ? F_WRLCK : (op & LOCK_SH) ? F_RDLCK : F_UNLCK;
    arg.l_whence = SEEK_SET;
    arg.l_start = (off_t)start;
    arg.l_len = (off_t)len;
    int rc = fcntl(fd, (op & LOCK_NB) ? F_OFD_SETLK : F_OFD_SETLKW, &arg);
    if (rc != 0 && errno == EACCES)
        errno = EWOULDBLOCK; /* what POSIX lets F_SETLK say for "busy" */
    return rc;
}

/* fd holds the lock: keep it only if path still names fd's file. Someone may
 * have removed or replaced the file while we waited; a lock on the old inode
 * would then guard nothing, since newcomers open the new one. */
static int verify(int fd, int op, long long start, long long len, const char *path,
                  unsigned long long dev, unsigned long long ino)
{
    struct stat st;
    if (path == NULL) /* a descriptor given as such: there is no path */
        return TF_OK;
    if (stat(path, &st) == 0 && (unsigned long long)st.st_dev == dev &&
        (unsigned long long)st.st_ino == ino)
        return TF_OK;
    /* Gone or replaced (or unreadable: reopening the path reports why). */
    lock_op(fd, (op & TF_OFD) | LOCK_UN, start, len);
    return TF_STALE;
}

int tf_try_range(int fd, int op, long long start, long long len, const char *path,
                 unsigned long long dev, unsigned long long ino)
{
    if (lock_op(fd, op | LOCK_NB, start, len) != 0) {
        if (errno == EWOULDBLOCK)
            return TF_BUSY;
        return errno == EINTR ? TF_INTERRUPTED : -errno;
    }
    return verify(fd, op, start, len, path, dev, ino);
}

int tf_try(int fd, int op, const char *path, unsigned long long dev, unsigned long long ino)
{
    return tf_try_range(fd, op, 0, 0, path, dev, ino);
}

size_t tf_waiter_size(void) { return sizeof(tf_waiter); }

void tf_waiter_init(tf_waiter *w, double deadline)
{
    memset(w, 0, sizeof *w);
    w->slot = NOT_QUEUED;
    w->deadline = INT64_MAX;
    if (deadline >= 0 && deadline < MAX_DEADLINE_S) /* false for NaN too */
        w->deadline = (int64_t)(deadline * 1e9);
}

tf_waiter *tf_waiter_new(double deadline)
{
    tf_waiter *w = malloc(sizeof *w);
    if (w != NULL)
        tf_waiter_init(w, deadline);
    return w;
}

void tf_waiter_free(tf_waiter *w)
{
    /* Never queued here: tf_wait() dequeues before it returns, and the
     * caller frees only after tf_wait() has returned. */
    free(w);
}

void tf_cancel(tf_waiter *w, int reason)
{
    pthread_mutex_lock(&mu);
    if (w->reason == 0)
        w->reason = reason;
    /* resends > 0: already being interrupted, the scheduler goes on re-sending. */
    if (w->state == WAITING && w->resends == 0)
        interrupt(w, now_ns());
    pthread_mutex_unlock(&mu);
}

int tf_wait(tf_waiter *w, int fd, int op, long long start, long long len, const char *path,
            unsigned long long dev, unsigned long long ino)
{
    sigset_t ours, old;
    int rc, err, reason, timed = 0;
    timer_t timer;
    long long delay;

    pthread_mutex_lock(&mu);
    rc = ensure_handler();
    if (rc == TF_OK)
        rc = ensure_scheduler();
    if (rc == TF_OK)
        rc = heap_reserve(waiting + 1);
    if (rc == TF_OK && w->reason == 0 && w->deadline <= now_ns())
        w->reason = TF_DEADLINE;
    if (rc == TF_OK && w->reason != 0)
        rc = w->reason;
    if (rc == TF_OK) {
        w->thread = pthread_self();
        w->epoch = epoch;
        w->resends = 0;
        w->state = WAITING;
        waiting++;
        /* The deadline's one owner: the wait's own timer (armed with the
         * handler known to be ours), or if none can be made, the scheduler. */
        if (w->deadline != INT64_MAX) {
            timed = arm_timer(&timer, w->deadline) == 0;
            if (!timed) {
                w->due = w->deadline;
                heap_push(w);
            }
        }
    }
    delay = test_delay_ns;
    pthread_mutex_unlock(&mu);
    if (rc != TF_OK)
        return rc;

    /* The caller may have inherited a mask that blocks the signal (rpm hit
     * this with flock -w): unblock it for the wait, restore it afterwards.
     * Only now that the handler is known to be ours: unblocking a pending
     * signal with no handler would run its default action. */
    sigemptyset(&ours);
    sigaddset(&ours, signo);
    pthread_sigmask(SIG_UNBLOCK, &ours, &old);

    /* The wait. A signal that arrives before flock() starts is lost; the
     * scheduler's re-send covers that. EINTR is not retried here: the caller
     * decides (ours: the wait is over; another signal: Python runs its
     * handler, then waits again). F_OFD_SETLKW returns EINTR just as
     * flock() does. */
    if (delay > 0) {
        int64_t until = now_ns() + delay;
        struct timespec ts = {(time_t)(until / 1000000000LL), (long)(until % 1000000000LL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
    }
    rc = lock_op(fd, op, start, len);
    err = errno;
    if (timed)
        timer_delete(timer); /* a signal it sent and not yet delivered: see below */

    pthread_mutex_lock(&mu);
    w->state = IDLE; /* the acknowledgement: no signal is sent to us after this */
    waiting--;
    if (w->slot != NOT_QUEUED)
        heap_remove(w);
    if (w->reason == 0 && w->deadline <= now_ns())
        w->reason = TF_DEADLINE; /* the timer's (the scheduler sets it itself) */
    reason = w->reason;
    pthread_mutex_unlock(&mu);

    if (sigismember(&old, signo)) {
        /* Blocked again: consume a signal that was sent but not yet
         * delivered, so none is left pending for the caller. */
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        sigset_t pending;
        static const struct timespec zero = {0, 0};
        /* A loop: real-time signals queue more than one instance. */
        while (sigpending(&pending) == 0 && sigismember(&pending, signo) &&
               sigtimedwait(&ours, NULL, &zero) == signo)
            ;
    }

    if (rc == 0)
        return verify(fd, op, start, len, path, dev, ino); /* granted, even if a reason raced in */
    if (err == EINTR)
        return reason != 0 ? reason : TF_INTERRUPTED;
    return -err;
}

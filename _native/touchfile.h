/* The native core's interface. This header is also the cffi cdef
 * (_native/build_ffi.py reads it), so it holds only what cffi can parse:
 * no includes, no include guards, no expressions in #defines. */

/* What tf_try() and tf_wait() return; negative values are -errno. */
#define TF_OK 0            /* the lock is held, and the path still names our file */
#define TF_BUSY 1          /* tf_try: the lock is held elsewhere */
#define TF_STALE 2         /* locked, but the path names another file now: unlocked again */
#define TF_INTERRUPTED 3   /* a signal that is not ours: let Python run its handler, then retry */
#define TF_DEADLINE 4      /* the waiter's deadline passed */
#define TF_CANCELLED 5     /* reasons given to tf_cancel(); the first reason wins */
#define TF_CLOSED 6
#define TF_NO_HANDLER 7    /* the interrupt signal has a foreign or SA_RESTART handler */

typedef struct tf_waiter tf_waiter;

/* The version of the Python package this module was built for. */
const char *tf_version(void);

/* Choose the interrupt signal; call before the first wait. */
int tf_set_signal(int signo);

/* 1 when the interrupt signal's handler is ours (or can be made ours), 0 when not. */
int tf_handler_ready(void);

/* op is LOCK_SH or LOCK_EX for flock(); with TF_OFD added, the same lock
 * taken with fcntl() as an open file description's record lock
 * (F_OFD_SETLK/F_OFD_SETLKW: F_RDLCK or F_WRLCK) on the whole file, or on
 * len bytes from start (len 0: to the end) with the _range calls. */
#define TF_OFD 256

/* One non-blocking try of op, then check that path still names the file
 * (dev, ino) that fd is open on (path NULL: a bare descriptor, no check). */
int tf_try(int fd, int op, const char *path, unsigned long long dev, unsigned long long ino);
int tf_try_range(int fd, int op, long long start, long long len, const char *path,
                 unsigned long long dev, unsigned long long ino);

/* A waiter ends at its deadline (absolute, in seconds on CLOCK_MONOTONIC,
 * the clock of Python's time.monotonic(); negative: none) or when
 * tf_cancel() is called on it from any thread. */
tf_waiter *tf_waiter_new(double deadline);
void tf_waiter_free(tf_waiter *w);

/* The same waiter in memory of the caller's: tf_waiter_size() bytes, aligned
 * for an int64_t, which the caller frees once tf_wait() has returned
 * (Python's, with no call into C on a wait's way out). */
size_t tf_waiter_size(void);
void tf_waiter_init(tf_waiter *w, double deadline);

/* Block in flock(fd, op) (or fcntl(F_OFD_SETLKW), with TF_OFD) until the
 * lock is granted or the waiter is ended. */
int tf_wait(tf_waiter *w, int fd, int op, long long start, long long len, const char *path,
            unsigned long long dev, unsigned long long ino);

/* End the wait, now or when it starts, with reason (TF_CANCELLED or TF_CLOSED). */
void tf_cancel(tf_waiter *w, int reason);

/* For tests only: sleep ns between arming a wait's deadline and its
 * blocking call (0: none), so that the signal lands before the call starts. */
void tf_set_test_delay(long long ns);

/* nfslikefs: a pass-through FUSE file system whose flock() locks the way the
 * Linux NFS client's does, for touchfile's tests (there is no NFS client on
 * the machines they run on).
 *
 * The NFS client emulates flock() with whole-file byte-range locks: LOCK_SH
 * is a read lock, which needs a descriptor open for reading, and LOCK_EX a
 * write lock, which needs one open for writing, so LOCK_EX through an
 * O_RDONLY descriptor fails with EBADF. Here each open of the mount gets its
 * own open of the backing file with the same access mode, and flock() (which
 * the kernel forwards to us, as FUSE_SETLK[W] with FUSE_LK_FLOCK, once we ask
 * for FUSE_CAP_FLOCK_LOCKS) becomes an open-file-description lock on it.
 * OFD locks, not classic fcntl() locks: those would all belong to this one
 * process and never conflict with each other.
 *
 * Build: gcc -Wall -Wextra -O2 -o nfslikefs nfslikefs.c $(pkg-config --cflags --libs fuse3)
 * Run:   nfslikefs -f BACKING_DIR MOUNTPOINT; SIGTERM unmounts it. */

#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int base = -1; /* O_PATH descriptor of the backing directory */

/* FUSE's paths are absolute ("/a"): make them relative to base. */
static const char *rel(const char *path) { return path[1] == '\0' ? "." : path + 1; }

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    conn->want |= FUSE_CAP_FLOCK_LOCKS; /* else the kernel locks locally */
    cfg->use_ino = 1;                   /* the backing inode numbers */
    cfg->nullpath_ok = 1;
    cfg->intr = 1;                      /* a signalled client's wait ends: */
    cfg->intr_signal = SIGUSR1;         /* see the handler in main() */
    return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    int rc = fi ? fstat((int)fi->fh, st) : fstatat(base, rel(path), st, AT_SYMLINK_NOFOLLOW);
    return rc == -1 ? -errno : 0;
}

/* The client's flags, hence its access mode, on the backing descriptor. */
static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    int fd = openat(base, rel(path), fi->flags | O_CLOEXEC, mode);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi)
{
    int fd = openat(base, rel(path), (fi->flags & ~O_CREAT) | O_CLOEXEC);
    if (fd == -1)
        return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

/* The last close of a client's open file description: its lock goes with it. */
static int fs_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int fs_flock(const char *path, struct fuse_file_info *fi, int op)
{
    (void)path;
    struct flock fl = {.l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    switch (op & ~LOCK_NB) {
    case LOCK_SH: fl.l_type = F_RDLCK; break;
    case LOCK_EX: fl.l_type = F_WRLCK; break;
    case LOCK_UN: fl.l_type = F_UNLCK; break;
    default: return -EINVAL;
    }
    int cmd = (op & LOCK_NB) ? F_OFD_SETLK : F_OFD_SETLKW;
    /* An interrupt that came before libfuse could signal this thread. */
    if (cmd == F_OFD_SETLKW && fuse_interrupted())
        return -EINTR;
    /* libfuse cancels its workers on unmount: a blocked wait must let it. */
    int old, rc;
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
    rc = fcntl((int)fi->fh, cmd, &fl);
    pthread_setcancelstate(old, NULL);
    if (rc == -1) /* EBADF: a write lock through a read-only descriptor */
        return errno == EACCES ? -EWOULDBLOCK : -errno;
    return 0;
}

static const struct fuse_operations ops = {
    .init = fs_init,     .getattr = fs_getattr, .create = fs_create,
    .open = fs_open,     .release = fs_release, .flock = fs_flock,
};

static void on_interrupt(int sig) { (void)sig; }

int main(int argc, char *argv[])
{
    if (argc != 4 || strcmp(argv[1], "-f") != 0) {
        fprintf(stderr, "usage: %s -f BACKING_DIR MOUNTPOINT\n", argv[0]);
        return 2;
    }
    base = open(argv[2], O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (base == -1) {
        perror(argv[2]);
        return 1;
    }
    /* libfuse 3 decides on its interrupt handler before fs_init() asks for
     * one: install it here, without SA_RESTART, so that a worker blocked in
     * F_OFD_SETLKW returns EINTR when libfuse signals it. */
    struct sigaction sa = {.sa_handler = on_interrupt, .sa_flags = 0};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    /* default_permissions: the kernel checks each access against the file's
     * mode, as an NFS server would; we run as root and would not. */
    char *fuse_argv[] = {argv[0], "-o", "default_permissions", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
    struct fuse *f = fuse_new(&args, &ops, sizeof ops, NULL);
    if (f == NULL)
        return 1;
    int rc = 1;
    if (fuse_mount(f, argv[3]) == 0) {
        struct fuse_session *se = fuse_get_session(f);
        /* Each blocked flock() holds a worker: libfuse's default of 10 would
         * let ten waiters stall the mount, the holder's unlock included. */
        struct fuse_loop_config *loop = fuse_loop_cfg_create();
        fuse_loop_cfg_set_max_threads(loop, 1000);
        if (fuse_set_signal_handlers(se) == 0) { /* SIGTERM: unmount */
            rc = fuse_loop_mt(f, loop) < 0;
            fuse_remove_signal_handlers(se);
        }
        fuse_loop_cfg_destroy(loop);
        fuse_unmount(f);
    }
    fuse_destroy(f);
    return rc;
}

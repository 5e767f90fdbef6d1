/* cryo.h: take part in cryo's checkpoints from C (BLCR-style names; the protocol of
 * cryo/app/protocol.py, documented in docs/protocol.md).  Header only:
 *
 *     #include <cryo.h>        cc prog.c -pthread $(python3 -m cryo.app --cflags)
 *     (first, or with _GNU_SOURCE defined: it needs struct ucred)
 *
 *     static int cb(void *arg) {
 *         flush_everything();
 *         int r = cr_checkpoint(CR_CHECKPOINT_READY);   // blocks while it is taken
 *         if (r > 0) reconnect();                        // restarted (cr_get_restart_info)
 *         return 0;                                      // r == 0: continued; < 0: failed
 *     }
 *     int main(void) {
 *         cr_init();
 *         cr_register_callback(cb, NULL, CR_THREAD_CONTEXT);
 *         cr_enter_cs(); ... cr_leave_cs();              // never cut by a checkpoint
 *     }
 *
 * Without a checkpointer everything here is harmless: a thread waits on a socket.
 * Callbacks run in threads of their own (CR_THREAD_CONTEXT); CR_SIGNAL_CONTEXT, which
 * the Python cryo.app offers, is refused here (-1, ENOTSUP): a callback that blocks in a
 * signal handler could deadlock against the program's own critical sections. */
#ifndef CRYO_H
#define CRYO_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* struct ucred */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CR_THREAD_CONTEXT 1
#define CR_SIGNAL_CONTEXT 2
#define CR_CHECKPOINT_READY 0
#define CR_CHECKPOINT_TEMP_FAILURE 1
#define CR_MAX_CALLBACKS 32
#define CR_MAX_SAVED 64

typedef int (*cr_callback_t)(void *arg);
typedef int cr_client_id_t;

struct cr_checkpoint_info {
    int signal;           /* sent after the checkpoint (0: none) */
    pid_t requester;      /* who asked */
    pid_t target;         /* pid, pgid or sid asked for */
    char scope[16];       /* "process", "tree", "pgid", "sid" */
};

struct cr_restart_info {
    pid_t old_pid, new_pid;
    char old_host[256], new_host[256];
    char image[4096];
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started, critical, in_round, pending, outcome, done, restarted;
    char veto[256];
    struct { cr_callback_t fn; void *arg; } cb[CR_MAX_CALLBACKS];
    int ncb;
    char *saved[CR_MAX_SAVED];
    int nsaved;
    struct cr_checkpoint_info info;
    struct cr_restart_info rinfo;
    int listener;
} cr__ = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
static __thread int cr__in_callback, cr__ready_said;

/* -- messages: a name, then tab-separated key=value fields, one line ---------------- */
static inline int cr__read_line(int fd, char *buf, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = read(fd, buf + n, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        if (buf[n] == '\n') { buf[n] = 0; return (int)n; }
        n++;
    }
    return -1;
}

static inline const char *cr__field(const char *line, const char *key, char *out, size_t size) {
    size_t klen = strlen(key);
    const char *p = strchr(line, '\t');
    while (p) {
        p++;
        if (!strncmp(p, key, klen) && p[klen] == '=') {
            const char *v = p + klen + 1;
            size_t i = 0;
            while (*v && *v != '\t' && i + 1 < size) {
                if (v[0] == '%' && v[1] && v[2]) {
                    char hex[3] = { v[1], v[2], 0 };
                    out[i++] = (char)strtol(hex, NULL, 16);
                    v += 3;
                } else out[i++] = *v++;
            }
            out[i] = 0;
            return out;
        }
        p = strchr(p, '\t');
    }
    return NULL;
}

static inline int cr__send(int fd, const char *msg) {
    size_t n = strlen(msg);
    while (n) {
        ssize_t w = write(fd, msg, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        msg += w; n -= (size_t)w;
    }
    return 0;
}

static inline void *cr__run_callback(void *p) {
    int i = (int)(long)p;
    cr__in_callback = 1;
    cr__ready_said = 0;
    cr__.cb[i].fn(cr__.cb[i].arg);
    if (!cr__ready_said) {  /* returned without saying ready: counts as ready */
        pthread_mutex_lock(&cr__.mu);
        cr__.pending--;
        pthread_cond_broadcast(&cr__.cv);
        pthread_mutex_unlock(&cr__.mu);
    }
    return NULL;
}

static inline void cr__deadline(struct timespec *ts, double seconds) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)seconds;
    ts->tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

static inline void cr__one(int conn) {
    char line[8192], v[4096], msg[16384];
    struct timespec until;
    if (cr__read_line(conn, line, sizeof line) < 0 || strncmp(line, "checkpoint", 10)) return;
    double timeout = cr__field(line, "timeout", v, sizeof v) ? atof(v) : 30.0;
    int nonblocking = cr__field(line, "nonblocking", v, sizeof v) && v[0] == '1';
    int callbacks = !cr__field(line, "callbacks", v, sizeof v) || v[0] == '1';
    pthread_mutex_lock(&cr__.mu);
    if (cr__.critical && nonblocking) {
        pthread_mutex_unlock(&cr__.mu);
        cr__send(conn, "busy\treason=inside a critical section\n");
        return;
    }
    cr__deadline(&until, timeout);
    while (cr__.critical)
        if (pthread_cond_timedwait(&cr__.cv, &cr__.mu, &until) == ETIMEDOUT) {
            pthread_mutex_unlock(&cr__.mu);
            cr__send(conn, "busy\treason=a critical section did not end in time\n");
            return;
        }
    memset(&cr__.info, 0, sizeof cr__.info);
    cr__.info.signal = cr__field(line, "signal", v, sizeof v) ? atoi(v) : 0;
    cr__.info.requester = cr__field(line, "requester", v, sizeof v) ? atoi(v) : 0;
    cr__.info.target = cr__field(line, "target", v, sizeof v) ? atoi(v) : 0;
    cr__field(line, "scope", cr__.info.scope, sizeof cr__.info.scope);
    cr__.in_round = 1;
    cr__.done = 0;
    cr__.veto[0] = 0;
    cr__.pending = callbacks ? cr__.ncb : 0;
    int n = cr__.pending;
    pthread_mutex_unlock(&cr__.mu);
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, cr__run_callback, (void *)(long)i);
        pthread_detach(t);
    }
    pthread_mutex_lock(&cr__.mu);
    cr__deadline(&until, timeout);
    while (cr__.pending > 0 && !cr__.veto[0])
        if (pthread_cond_timedwait(&cr__.cv, &cr__.mu, &until) == ETIMEDOUT) {
            snprintf(cr__.veto, sizeof cr__.veto, "a callback was not ready in time");
            break;
        }
    if (cr__.veto[0]) {
        snprintf(msg, sizeof msg, "abort\treason=%s\n", cr__.veto);
    } else {
        size_t off = (size_t)snprintf(msg, sizeof msg, "ready");
        for (int i = 0; i < cr__.nsaved && off < sizeof msg - 1; i++)
            off += (size_t)snprintf(msg + off, sizeof msg - off, "\tfile=%s", cr__.saved[i]);
        snprintf(msg + off, sizeof msg - off, "\n");
    }
    int vetoed = cr__.veto[0] != 0;
    pthread_mutex_unlock(&cr__.mu);
    cr__send(conn, msg);
    int outcome = -1, restarted = 0;
    if (!vetoed && cr__read_line(conn, line, sizeof line) >= 0) {
        if (!strncmp(line, "continued", 9)) outcome = 0;
        if (!strncmp(line, "restarted", 9)) {
            outcome = 1; restarted = 1;
        }
    }
    pthread_mutex_lock(&cr__.mu);
    if (restarted) {
        struct cr_restart_info *r = &cr__.rinfo;
        memset(r, 0, sizeof *r);
        if (cr__field(line, "old_pid", v, sizeof v)) r->old_pid = atoi(v);
        if (cr__field(line, "new_pid", v, sizeof v)) r->new_pid = atoi(v);
        cr__field(line, "old_host", r->old_host, sizeof r->old_host);
        cr__field(line, "new_host", r->new_host, sizeof r->new_host);
        cr__field(line, "image", r->image, sizeof r->image);
        cr__.restarted = 1;
    }
    cr__.outcome = outcome;
    cr__.done = 1;
    cr__.in_round = 0;
    pthread_cond_broadcast(&cr__.cv);
    pthread_mutex_unlock(&cr__.mu);
}

static inline void *cr__agent(void *unused) {
    (void)unused;
    for (;;) {
        int conn = accept(cr__.listener, NULL, NULL);
        if (conn < 0) {
            if (errno == EINTR) continue;
            return NULL;
        }
        struct ucred who;
        socklen_t len = sizeof who;
        /* only root (cryo) or our own user may ask */
        if (!getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &who, &len) &&
            (who.uid == 0 || who.uid == getuid()))
            cr__one(conn);
        close(conn);
    }
}

/* -- the API ------------------------------------------------------------------------ */
static inline cr_client_id_t cr_init(void) {
    pthread_mutex_lock(&cr__.mu);
    if (!cr__.started) {
        unsigned char rnd[8];
        struct sockaddr_un a;
        memset(&a, 0, sizeof a);
        a.sun_family = AF_UNIX;
        if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) memset(rnd, getpid() & 0xff, 8);
        int len = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "cryo-app/");
        for (int i = 0; i < 8; i++) len += snprintf(a.sun_path + 1 + len, 3, "%02x", rnd[i]);
        cr__.listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (cr__.listener < 0 ||
            bind(cr__.listener, (struct sockaddr *)&a, (socklen_t)(sizeof(sa_family_t) + 1 + len)) ||
            listen(cr__.listener, 4)) {
            pthread_mutex_unlock(&cr__.mu);
            return -1;
        }
        pthread_t t;
        pthread_create(&t, NULL, cr__agent, NULL);
        pthread_detach(t);
        cr__.started = 1;
    }
    pthread_mutex_unlock(&cr__.mu);
    return 1;
}

static inline int cr_register_callback(cr_callback_t fn, void *arg, int flags) {
    if (flags & CR_SIGNAL_CONTEXT) { errno = ENOTSUP; return -1; }
    if (cr_init() < 0) return -1;
    pthread_mutex_lock(&cr__.mu);
    if (cr__.ncb == CR_MAX_CALLBACKS) { pthread_mutex_unlock(&cr__.mu); errno = ENOSPC; return -1; }
    int id = cr__.ncb++;
    cr__.cb[id].fn = fn;
    cr__.cb[id].arg = arg;
    pthread_mutex_unlock(&cr__.mu);
    return id;
}

/* In a callback: CR_CHECKPOINT_READY blocks while the checkpoint is taken and returns 0
 * (continued), > 0 (restarted) or < 0 (failed); CR_CHECKPOINT_TEMP_FAILURE vetoes it. */
static inline int cr_checkpoint(int flags) {
    if (!cr__in_callback) return 0;
    pthread_mutex_lock(&cr__.mu);
    if (flags == CR_CHECKPOINT_TEMP_FAILURE) {
        if (!cr__.veto[0]) snprintf(cr__.veto, sizeof cr__.veto, "aborted by the application");
        pthread_cond_broadcast(&cr__.cv);
        pthread_mutex_unlock(&cr__.mu);
        return -1;
    }
    cr__ready_said = 1;
    cr__.pending--;
    pthread_cond_broadcast(&cr__.cv);
    while (!cr__.done) pthread_cond_wait(&cr__.cv, &cr__.mu);
    int r = cr__.outcome;
    pthread_mutex_unlock(&cr__.mu);
    return r;
}

static inline int cr_enter_cs(void) {
    if (cr_init() < 0) return -1;
    pthread_mutex_lock(&cr__.mu);
    while (cr__.in_round && !cr__in_callback) pthread_cond_wait(&cr__.cv, &cr__.mu);
    cr__.critical++;
    pthread_mutex_unlock(&cr__.mu);
    return 0;
}

static inline int cr_leave_cs(void) {
    pthread_mutex_lock(&cr__.mu);
    if (cr__.critical > 0) cr__.critical--;
    pthread_cond_broadcast(&cr__.cv);
    pthread_mutex_unlock(&cr__.mu);
    return 0;
}

static inline const struct cr_checkpoint_info *cr_get_checkpoint_info(void) {
    return cr__in_callback ? &cr__.info : NULL;
}

static inline const struct cr_restart_info *cr_get_restart_info(void) {
    return cr__.restarted ? &cr__.rinfo : NULL;
}

static inline int cr_add_saved_file(const char *path) {
    if (cr_init() < 0) return -1;
    char *full = realpath(path, NULL);
    if (!full) return -1;
    pthread_mutex_lock(&cr__.mu);
    if (cr__.nsaved < CR_MAX_SAVED) cr__.saved[cr__.nsaved++] = full;
    else free(full);
    pthread_mutex_unlock(&cr__.mu);
    return 0;
}

#endif /* CRYO_H */

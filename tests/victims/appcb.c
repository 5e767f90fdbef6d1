/* A C program that takes part in its checkpoints through cryo.h.
 *   appcb OUT MODE     MODE: plain | veto | critical */
#include <cryo.h>
#include <signal.h>
#include <stdarg.h>

static FILE *out;
static const char *mode;

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
}

static int callback(void *arg) {
    (void)arg;
    const struct cr_checkpoint_info *info = cr_get_checkpoint_info();
    say("callback start target=%d scope=%s", info ? info->target : -1, info ? info->scope : "?");
    if (!strcmp(mode, "veto")) {
        cr_checkpoint(CR_CHECKPOINT_TEMP_FAILURE);
        return 0;
    }
    int r = cr_checkpoint(CR_CHECKPOINT_READY);
    if (r > 0) {
        const struct cr_restart_info *ri = cr_get_restart_info();
        say("callback RESTARTED old=%d new=%d pid=%d", ri->old_pid, ri->new_pid, getpid());
    } else {
        say(r == 0 ? "callback CONTINUED" : "callback FAILED");
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    out = fopen(argv[1], "a");
    mode = argv[2];
    if (cr_init() < 0 || cr_register_callback(callback, NULL, CR_THREAD_CONTEXT) < 0) {
        say("FAIL cryo.h init");
        return 1;
    }
    if (cr_register_callback(callback, NULL, CR_SIGNAL_CONTEXT) != -1 || errno != ENOTSUP)
        say("FAIL signal context accepted");
    say("ready %d", getpid());
    for (int n = 1;; n++) {
        if (!strcmp(mode, "critical")) {
            cr_enter_cs();
            say("enter %d", n);
            usleep(400000);
            say("leave %d", n);
            cr_leave_cs();
        }
        usleep(50000);
        say("tick %d", n);
    }
}

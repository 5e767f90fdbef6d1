"""Process state of issue 9 that no test covered in a `cryo run --pid-ns` job
(docs/state-coverage.md): injected calls there must be given the pids the job sees.
tgkill of a zombie that died by a signal, and the stop of a stopped child, are checked
by the job itself after a restart (tests/victims/family.c reads /proc by the pids it
sees, which a job without a /proc of its own cannot: this victim asks waitid)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import Procs, Victim, reap, run_cryo
from tests.integration.test_tree import kill_tree, nspids, tree_pids

JOB = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void h_go(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    FILE *out = fopen(argv[1], "a");
    setvbuf(out, NULL, _IOLBF, 0);
    signal(SIGUSR1, h_go);
    pid_t a = fork();
    if (a == 0) { raise(SIGSTOP); fprintf(out, "a continued\n"); for (;;) pause(); }
    pid_t c = fork();
    if (c == 0) { raise(SIGTERM); _exit(1); }
    siginfo_t si;
    for (;;) {  /* both seen, neither collected (WNOWAIT) */
        memset(&si, 0, sizeof si);
        int st = waitid(P_PID, a, &si, WSTOPPED | WNOHANG | WNOWAIT) == 0 && si.si_pid == a;
        memset(&si, 0, sizeof si);
        if (st && waitid(P_PID, c, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == c)
            break;
        usleep(10000);
    }
    fprintf(out, "ready %d %d %d\n", getpid(), a, c);
    for (int i = 0; !go; i++) { fprintf(out, "ok %d\n", i); usleep(50000); }
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, a, &si, WSTOPPED) || si.si_code != CLD_STOPPED) fprintf(out, "FAIL stop\n");
    fprintf(out, "waited stopped %d %d\n", si.si_code == CLD_STOPPED, si.si_status);
    kill(a, SIGCONT);
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, a, &si, WCONTINUED) || si.si_code != CLD_CONTINUED)
        fprintf(out, "FAIL cont\n");
    fprintf(out, "waited continued %d\n", si.si_code == CLD_CONTINUED);
    int status = 0;
    if (waitpid(c, &status, 0) != c) fprintf(out, "FAIL no zombie\n");
    fprintf(out, "zombie %d %d\n", WIFSIGNALED(status), WTERMSIG(status));
    for (;;) pause();
}
"""


def test_zombie_and_stopped_child_in_a_pid_namespace(procs: Procs, tmp_path: Path) -> None:
    src = tmp_path / "job.c"
    src.write_text(JOB)
    exe = tmp_path / "job"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--", str(exe),
                 str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    v = Victim(root, out)
    ready = v.wait_line("ready").split()
    assert ready[1] == "1", "the job is pid 1 of its namespace"
    v.wait_ok_after(1)
    last = max(v.oks())
    before = tree_pids(root)
    r = run_cryo("checkpoint", str(root), "-D", str(tmp_path / "img"), "--stop")
    assert r.returncode == 0, r.stderr
    kill_tree(before)
    for p in before:
        reap(p)
    r = run_cryo("restart", "-D", str(tmp_path / "img"), "--detach")
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    after = tree_pids(root)
    for p in after:
        procs.track(p)
    assert nspids(root)[-1] == "1"
    v = Victim(root, out)
    v.wait_ok_after(last + 2)
    os.kill(root, signal.SIGUSR1)
    assert v.wait_line("waited stopped") == f"waited stopped 1 {signal.SIGSTOP}"
    assert v.wait_line("waited continued") == "waited continued 1"
    assert v.wait_line("zombie") == f"zombie 1 {signal.SIGTERM}", "the zombie died by a signal"
    v.wait_line("a continued")
    assert not v.fails()
    kill_tree(after)

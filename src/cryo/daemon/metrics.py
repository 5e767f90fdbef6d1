"""Counters of the daemon, and the Prometheus text endpoint (``--metrics ADDR:PORT``)."""

from __future__ import annotations

import http.server
import os
import resource
import threading
from collections import defaultdict
from collections.abc import Callable

PREFIX = "cryo_"
# name -> (type, help); every per-job series has the label job="NAME"
SERIES = {
    "checkpoints_total": ("counter", "checkpoints that made a version"),
    "checkpoint_failures_total": ("counter", "checkpoints that failed"),
    "checkpoint_seconds_total": ("counter", "time spent in checkpoints"),
    "checkpoint_frozen_seconds_total": ("counter", "time the processes were frozen"),
    "checkpoint_stored_bytes_total": ("counter", "bytes written to the store"),
    "checkpoint_memory_bytes": ("gauge", "memory of the job at its last checkpoint"),
    "checkpoint_lateness_seconds_max": ("gauge", "the latest a periodic checkpoint started"),
    "restarts_total": ("counter", "restarts of the job"),
    "restart_failures_total": ("counter", "restarts that failed"),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, name: str, job: str, value: float = 1.0) -> None:
        with self._lock:
            self._values[name][job] += value

    def set(self, name: str, job: str, value: float) -> None:
        with self._lock:
            self._values[name][job] = value

    def top(self, name: str, job: str, value: float) -> None:
        with self._lock:
            series = self._values[name]
            series[job] = max(series.get(job, value), value)

    def forget(self, job: str) -> None:
        with self._lock:
            for series in self._values.values():
                series.pop(job, None)

    def render(self, jobs_by_state: dict[str, int]) -> str:
        out = []
        with self._lock:
            for name, (kind, text) in SERIES.items():
                out.append(f"# HELP {PREFIX}{name} {text}")
                out.append(f"# TYPE {PREFIX}{name} {kind}")
                for job, value in sorted(self._values.get(name, {}).items()):
                    out.append(f'{PREFIX}{name}{{job="{_label(job)}"}} {value:g}')
        out.append(f"# HELP {PREFIX}jobs jobs by state")
        out.append(f"# TYPE {PREFIX}jobs gauge")
        for state, n in sorted(jobs_by_state.items()):
            out.append(f'{PREFIX}jobs{{state="{_label(state)}"}} {n}')
        out.append(f"# HELP {PREFIX}daemon_rss_bytes resident memory of cryod")
        out.append(f"# TYPE {PREFIX}daemon_rss_bytes gauge")
        out.append(f"{PREFIX}daemon_rss_bytes {rss_bytes()}")
        return "\n".join(out) + "\n"


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(address: str, render: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    """Serve ``render()`` at /metrics on ADDR:PORT from a thread; returns the server."""
    host, _, port = address.rpartition(":")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)),
                                             Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="cryod-metrics", daemon=True).start()
    return server


__all__ = ["Metrics", "rss_bytes", "serve"]

"""SQLite in WAL mode with a reader and a writer process (children of this one), each
inside its transaction: the reader holds a snapshot (a read mark of the WAL index, an
fcntl lock on the -shm file, which it maps shared), the writer holds the write lock
with rows inserted and not committed.  Each takes commands from a FIFO of its own.

argv: OUT DB.  Reports "reader ready N", "writer ready", then per command: reader
"count" -> "reader sees N" (in its snapshot), "end" -> "reader after N" (a new
snapshot); writer "commit" -> "writer committed"."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

out_path, db = sys.argv[1], sys.argv[2]


def say(msg: str) -> None:
    with open(out_path, "a") as f:
        f.write(msg + "\n")


def commands(name: str) -> Iterator[str]:
    """Blocking reads of this child's FIFO, one command a line, until it is closed."""
    with open(f"{db}.{name}") as f:
        yield from (line.strip() for line in f)


def reader() -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN")
    n = c.execute("SELECT count(*) FROM t").fetchone()[0]  # the snapshot taken
    say(f"reader ready {n}")
    for cmd in commands("r"):
        if cmd == "count":
            say(f"reader sees {c.execute('SELECT count(*) FROM t').fetchone()[0]}")
        elif cmd == "end":
            c.execute("COMMIT")
            say(f"reader after {c.execute('SELECT count(*) FROM t').fetchone()[0]}")


def writer() -> None:
    c = sqlite3.connect(db, isolation_level=None)
    c.execute("BEGIN IMMEDIATE")
    c.executemany("INSERT INTO t VALUES (?, ?)", [(i, os.urandom(200).hex()) for i in
                                                  range(100, 150)])  # fmt: skip
    say("writer ready")
    for cmd in commands("w"):
        if cmd == "commit":
            c.execute("COMMIT")
            say("writer committed")


open(out_path, "a").close()
c = sqlite3.connect(db, isolation_level=None)
assert c.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
c.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, v TEXT)")
c.executemany("INSERT INTO t VALUES (?, ?)", [(i, os.urandom(200).hex()) for i in range(100)])
c.close()
for name in ("r", "w"):
    os.mkfifo(f"{db}.{name}")
pids = []
for role in (reader, writer):
    pid = os.fork()
    if pid == 0:
        role()
        os._exit(0)
    pids.append(pid)
    if role is reader:
        while "reader ready" not in Path(out_path).read_text():
            time.sleep(0.01)
for pid in pids:
    os.waitpid(pid, 0)
say("done")

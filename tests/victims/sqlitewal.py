"""A Python target holding an SQLite database in WAL mode with an exclusive lock
(locking_mode=EXCLUSIVE: POSIX record locks on the database file, held for as long as
the connection lives).  Each round it adds a row and checks the count; the test checks
from outside that the database is still locked against others after a restart."""

import os
import sqlite3
import sys
import time


def main() -> None:
    out, db = sys.argv[1], sys.argv[2]
    log = open(out, "a", buffering=1)  # noqa: SIM115
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA locking_mode=EXCLUSIVE")
    con.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    con.execute("INSERT INTO t VALUES (0)")  # the first write takes the exclusive lock
    log.write(f"ready {os.getpid()}\n")
    rnd = 0
    while True:
        con.execute("INSERT INTO t VALUES (?)", (rnd + 1,))
        count = con.execute("SELECT count(*) FROM t").fetchone()[0]
        if count != rnd + 2:
            log.write(f"FAIL count {count} at round {rnd}\n")
        else:
            log.write(f"ok {rnd}\n")
        rnd += 1
        time.sleep(0.02)


if __name__ == "__main__":
    main()

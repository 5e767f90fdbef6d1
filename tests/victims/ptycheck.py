"""What the pty victims that check themselves against a new pair share (ptylines.py,
ptystop_s12_h6.py): a pair made and typed into, "ready"; once ``go`` exists, a new pair
made and typed into the same way; then what ``look`` finds on each compared, named by
``names``, and what ``new_wrong`` says of the new pair's (a problem, or None), written as
"checked good" or "checked WHAT; ...".  Imported from the victims' directory (a script's
sys.path[0])."""

import os
import time
from collections.abc import Callable, Sequence
from typing import Any


def against_a_new_pair(out: str, go: str, pair: Callable[[], tuple[int, int]],
                       type_in: Callable[[int], None], look: Callable[..., Sequence[Any]],
                       names: Sequence[str],
                       new_wrong: Callable[[Sequence[Any]], str | None]) -> None:  # fmt: skip
    a = pair()
    type_in(a[0])
    time.sleep(0.1)
    with open(out, "w") as f:
        f.write("ready\n")
    while not os.path.exists(go):
        time.sleep(0.01)
    b = pair()
    type_in(b[0])
    time.sleep(0.1)
    got, want = look(*a), look(*b)
    bad = [f"{what} {g!r} not {w!r}" for what, g, w in zip(names, got, want, strict=True)
           if g != w]  # fmt: skip
    problem = new_wrong(want)
    if problem:
        bad.append(problem)
    with open(out, "a") as f:
        f.write("checked " + ("; ".join(bad) or "good") + "\n")
    time.sleep(600)

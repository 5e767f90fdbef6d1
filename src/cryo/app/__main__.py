"""``python -m cryo.app --cflags``: the compiler flags for C programs using cryo.h."""

import os
import sys

INCLUDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")

if __name__ == "__main__":
    if sys.argv[1:] == ["--cflags"]:
        print(f"-I{INCLUDE}")
    elif sys.argv[1:] == ["--include-dir"]:
        print(INCLUDE)
    else:
        print("usage: python -m cryo.app --cflags | --include-dir", file=sys.stderr)
        sys.exit(2)

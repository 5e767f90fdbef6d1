"""engine/spmf.py's list of the files a checkpoint depends on (DumpResult.files,
`cryo show --files`), from records alone."""

from __future__ import annotations

from cryo.engine import spmf


def test_depends_lists_each_file_once_with_its_uses() -> None:
    descs = [
        {"kind": "file", "path": "/data/in", "deleted": False},
        {"kind": "file", "path": "/tmp/scratch (deleted)", "deleted": True},
        {"kind": "pipe", "path": "pipe:[1]"},
        {"kind": "chr", "path": "/dev/null"},
    ]
    files = [
        {"pid": 10, "fds": [{"fd": 0, "desc": 3}, {"fd": 3, "desc": 0}, {"fd": 4, "desc": 1},
                            {"fd": 5, "desc": 2}], "cwd": "/work", "root": "/"},
        {"pid": 11, "fds": [{"fd": 3, "desc": 0}], "cwd": "/work", "root": "/jail"},
    ]  # fmt: skip
    mms = [
        {"pid": 10, "exe": "/usr/bin/prog", "vmas": [
            {"kind": "file", "path": "/usr/bin/prog"}, {"kind": "file", "path": "/lib/libc.so"},
            {"kind": "anon", "path": "[heap]"}, {"kind": "shared-file", "path": "/data/db"}]},
        {"pid": 11, "exe": "/usr/bin/prog (deleted)", "vmas": [
            {"kind": "file", "path": "/lib/libc.so"}]},
    ]  # fmt: skip
    saved = [{"pid": 10, "files": [{"path": "/usr/bin/prog"}, {"path": "/lib/libc.so"}]}]
    got = {(f["path"], f["use"]): (f["pids"], f["saved"])
           for f in spmf.depends(files, mms, descs, saved)}  # fmt: skip
    assert got == {
        ("/data/in", "open"): ([10, 11], False),
        ("/tmp/scratch", "open"): ([10], True),  # its contents are in the image
        ("/dev/null", "open"): ([10], False),
        ("/work", "cwd"): ([10, 11], False),
        ("/jail", "root"): ([11], False),
        ("/usr/bin/prog", "exe"): ([10, 11], True),
        ("/usr/bin/prog", "mapped"): ([10], True),
        ("/lib/libc.so", "mapped"): ([10, 11], True),
        ("/data/db", "mapped"): ([10], False),
    }
    assert [f["path"] for f in spmf.depends(files, mms, descs)] == sorted(
        f["path"] for f in spmf.depends(files, mms, descs))

"""A readable description of an image (``cryo show``), plain data for JSON."""

from __future__ import annotations

import time
from typing import Any

from cryo.engine import files, memory, registers, signals, task
from cryo.engine.spmf import of_image as files_of
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.reader import Image
from cryo.linux import structs as S
from cryo.linux.sysnames import name as syscall_name


def describe(path: str, *, verify: bool = True) -> dict[str, Any]:
    """What the image at ``path`` holds.  With ``verify`` (the default) every record and
    page block is checked first, as a restart would: ImageCorrupt (exit 5) if one does
    not match."""
    image = Image(path)
    try:
        if verify:
            image.check()
            image.verify()
        h = image.head
        out: dict[str, Any] = {
            "image": {
                "format": fmt.FORMAT_VERSION, "arch": h["arch"], "kernel": h["kernel"],
                "cryo": h["cryo"], "hostname": h["hostname"],
                "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["created"])),
                "memory": sum(b["raw"] for b in image.blocks),
                "stored": sum(b["stored"] for b in image.blocks),
                "blocks": len(image.blocks),
            },
            "processes": [],
        }  # fmt: skip
        tree_rec = image.raw(R.TREE)[0]
        descs = (image.raw(R.FDSC) or [{"descs": []}])[0]["descs"]
        out["tree"] = {"root": tree_rec["root"], "scope": tree_rec["scope"]}
        out["files"] = files_of(image)  # every file a restart opens (engine/spmf.py)
        for p in tree_rec["procs"]:
            pid = p["pid"]
            if p["zombie"]:
                out["processes"].append({"pid": pid, "ppid": p["ppid"], "pgid": p["pgid"],
                                         "sid": p["sid"], "zombie": True,
                                         "exit_code": p["exit_code"]})  # fmt: skip
                continue
            t = image.one(R.TASK, pid)
            mm = image.one(R.MM, pid)
            trecs = sorted((x for x in image.raw(R.THRD) if x["pid"] == pid),
                           key=lambda x: (x["tid"] != pid, x["tid"]))  # fmt: skip
            frec = image.one(R.FILE, pid)
            out["processes"].append({
                "pid": pid, "ppid": p["ppid"], "pgid": p["pgid"], "sid": p["sid"],
                "comm": t["comm"], "exe": mm["exe"], "uid": trecs[0]["uids"][0],
                "cwd": frec["cwd"],
                "threads": [_thread(x) for x in trecs],
                "registers": _thread(trecs[0]),
                "mappings": [
                    {"start": f"{v['start']:#x}", "end": f"{v['end']:#x}",
                     "perms": _perms(v), "size": v["end"] - v["start"],
                     "saved": v.get("data", 0), "kind": v["kind"], "path": v["path"],
                     "state": memory.describe_state(v)}
                    for v in mm["vmas"]
                ],
                "files": files.describe(frec, descs),
                "signals": signals.describe(image.one(R.SIGS, pid), trecs),
                "timers": len(image.one(R.TIMR, pid)["posix"]),
                "task": task.describe(t),
            })  # fmt: skip
        return out
    finally:
        image.close()


def _thread(trec: dict[str, Any]) -> dict[str, Any]:
    regs = S.user_regs_struct.from_buffer_copy(trec["regs"])
    sc = registers.signed(regs.orig_rax)
    return {"tid": trec["tid"], "comm": trec["comm"].decode(errors="replace"),
            "rip": f"{regs.rip:#x}", "rsp": f"{regs.rsp:#x}", "fs_base": f"{regs.fs_base:#x}",
            "syscall": sc if sc >= 0 else None,
            "syscall_name": syscall_name(sc) if sc >= 0 else None,
            "xstate_bytes": len(trec["xstate"]), **task.describe_thread(trec)}


def _perms(v: dict[str, Any]) -> str:
    p = v["prot"]
    return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-") + (
        "s" if v["shared"] else "p"
    )


__all__ = ["describe"]

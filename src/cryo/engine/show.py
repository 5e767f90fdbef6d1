"""A readable description of an image (``cryo show``), plain data for JSON."""

from __future__ import annotations

import time
from typing import Any

from cryo.engine import clocks
from cryo.engine import drivers as D
from cryo.engine.restore import _PER_PROCESS as PER_PROCESS
from cryo.engine.spmf import of_image as files_of
from cryo.image import format as fmt
from cryo.image import records as R
from cryo.image.reader import Image


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
                **clocks.describe(h.get("clocks")),
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
            records = {k: image.one(k, pid) for k in PER_PROCESS}
            records.update((k, r) for d in D.DRIVERS if d.optional for k in d.kinds
                           for r in image.raw(k) if isinstance(r, dict) and r.get("pid") == pid)
            view = D.View(records=records,
                          threads=sorted((x for x in image.raw(R.THRD) if x["pid"] == pid),
                                         key=lambda x: (x["tid"] != pid, x["tid"])),
                          descs=descs)  # fmt: skip
            entry: dict[str, Any] = {"pid": pid, "ppid": p["ppid"], "pgid": p["pgid"],
                                     "sid": p["sid"]}  # fmt: skip
            for d in D.DRIVERS:  # each resource says how it is described
                if d.describe:
                    entry.update(d.describe(view))
            out["processes"].append(entry)
        return out
    finally:
        image.close()


__all__ = ["describe"]

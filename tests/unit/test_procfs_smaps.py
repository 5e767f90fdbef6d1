"""procfs.parse_smaps_flags against a plain line-by-line reading of the same text."""

from __future__ import annotations

import glob

from cryo import procfs

SMAPS = b"""\
00400000-00401000 r-xp 00000000 fd:01 123 /usr/bin/with space (deleted)
Size:                  4 kB
KernelPageSize:        4 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000200000 rw-s 00000000 00:0f 99 /anon_hugepage (deleted)
Size:               2048 kB
KernelPageSize:     2048 kB
ProtectionKey:         3
VmFlags: rd wr sh mr mw me ms ht
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
7ffd10000000-7ffd10001000 ---p 00000000 00:00 0
VmFlags: mr mw me
"""


def reference(data: bytes) -> list[tuple[object, ...]]:
    out: list[dict[str, object]] = []
    for line in data.decode(errors="surrogateescape").splitlines():
        head = line.split(None, 1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            parts = line.split(None, 5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out.append({"start": start, "end": end, "perms": parts[1],
                        "offset": int(parts[2], 16), "dev": parts[3], "inode": int(parts[4]),
                        "path": parts[5] if len(parts) > 5 else "", "flags": (),
                        "page_size": 4096, "pkey": 0})  # fmt: skip
        elif head == "VmFlags:" and out:
            out[-1]["flags"] = tuple(line.split()[1:])
        elif head == "KernelPageSize:" and out:
            out[-1]["page_size"] = int(line.split()[1]) * 1024
        elif head == "ProtectionKey:" and out:
            out[-1]["pkey"] = int(line.split()[1])
    return [tuple(v.values()) for v in out]


def fields(vmas: list[procfs.Vma]) -> list[tuple[object, ...]]:
    return [(v.start, v.end, v.perms, v.offset, v.dev, v.inode, v.path, v.flags, v.page_size,
             v.pkey) for v in vmas]  # fmt: skip


def test_fields_of_each_vma() -> None:
    vmas = procfs.parse_smaps_flags(SMAPS)
    assert fields(vmas) == reference(SMAPS)
    assert [v.path for v in vmas] == ["/usr/bin/with space (deleted)",
                                      "/anon_hugepage (deleted)", "[stack]", ""]  # fmt: skip
    assert vmas[1].page_size == 2 << 20 and vmas[1].pkey == 3 and "ht" in vmas[1].flags
    assert vmas[2].flags == () and vmas[3].flags == ("mr", "mw", "me")
    assert procfs.parse_smaps_flags(b"") == []


def test_every_live_process_reads_as_line_by_line() -> None:
    seen = 0
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/smaps", "rb") as f:
                data = f.read()
        except OSError:
            continue
        assert fields(procfs.parse_smaps_flags(data)) == reference(data), d
        seen += 1
    assert seen > 0

"""The image grammar (cryo.image.schema), seals (cryo.image.seal) and the shared reader
helpers, on made-up records: no privileges needed."""

from __future__ import annotations

import copy
import io
import math
import os
import platform
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cryo.errors import ImageCorrupt
from cryo.image import format as fmt
from cryo.image import reader, schema, seal

DOC = Path(__file__).parents[2] / "docs" / "image-format.md"
PID, TID = 100, 101
MM_FIELDS = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
             "start_stack", "arg_start", "arg_end", "env_start", "env_end")


def test_doc_tables_are_generated_from_the_schema() -> None:
    text = DOC.read_text()
    assert schema.render_doc(text) == text, "run: python -m cryo.image.schema --write"


def thread(tid: int) -> dict[str, Any]:
    return {"pid": PID, "tid": tid, "regs": bytes(216), "xstate": bytes(1088), "blocked": 0,
            "pending": [], "altstack": bytes(24), "comm": b"t", "clear_tid": 0,
            "rseq": [0, 0, 0], "robust_list": [0, 24], "no_new_privs": 0,
            "uids": [0, 0, 0, 0], "gids": [0, 0, 0, 0], "groups": [],
            "caps": dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), "0" * 16),
            "from_a_newer_engine": {"whatever": 1}}  # fmt: skip


def records() -> dict[bytes, list[Any]]:
    """A small image as the engine writes it: one process, two threads."""
    vma = {"start": 0x400000, "end": 0x402000, "prot": 3, "shared": False, "kind": "anon",
           "path": "", "pgoff": 0, "flags": ["rd", "wr"], "data": 8192}  # fmt: skip
    return {
        b"HEAD": [{"arch": platform.machine(), "kernel": "6.18", "cryo": "0", "created": 1.5,
                   "hostname": "h", "page_size": 4096, "root_pid": PID, "pids": [PID]}],
        b"TREE": [{"root": PID, "scope": "process", "pidns": False, "procs": [
            {"pid": PID, "ppid": 1, "pgid": PID, "sid": PID, "zombie": False, "exit_code": 0,
             "exit_signal": 17, "threads": [PID, TID], "nspid": PID, "nstids": [PID, TID]}]}],
        b"TASK": [{"pid": PID, "ppid": 1, "pgid": PID, "sid": PID, "comm": "x",
                   "exit_signal": 17, "personality": 0, "rlimits": {7: [1024, 4096]},
                   "prctl": {"dumpable": 1}, "audit": None}],
        b"MM  ": [{"pid": PID, "vmas": [vma], "auxv": b"", "exe": "/bin/true",
                   "mm": dict.fromkeys(MM_FIELDS, 0)}],
        b"SIGS": [{"pid": PID, "actions": {1: bytes(32)}, "pending_shared": []}],
        b"TIMR": [{"pid": PID, "itimers": [bytes(32)] * 3, "posix": []}],
        b"FILE": [{"pid": PID, "fds": [{"fd": 0, "desc": 0, "cloexec": False}], "cwd": "/",
                   "root": "/", "umask": 0o22}],
        b"THRD": [thread(PID), thread(TID)],
        b"FDSC": [{"descs": [{"id": 0, "kind": "chr", "path": "/dev/null", "pos": 0,
                              "flags": 0, "ino": 5, "dev": 6, "mode": 0o20666, "size": 0,
                              "pid": PID, "fd": 0}]}],
        b"SHMO": [{"objs": []}],
        b"PBLK": [{"index": 0, "offset": 4096, "stored": 8192, "raw": 8192, "codec": "none",
                   "csum": 1, "runs": [[0x400000, 8192]], "pid": PID}],
    }  # fmt: skip


class Fake:
    """What schema.check reads of an image source."""

    what = "image"
    path = "/fake"

    def __init__(self, recs: dict[bytes, list[Any]]) -> None:
        self.records = defaultdict(list, recs)
        self.blocks = self.records[b"PBLK"]

    def raw(self, kind: bytes) -> list[Any]:
        return list(self.records.get(kind, []))


def test_a_good_image_passes() -> None:
    schema.check(Fake(records()))


BAD = [  # (what to do to the records, words the error must hold)
    (lambda r: r[b"THRD"][1].update(regs=bytes(200)), "THRD record 1"),
    (lambda r: r[b"THRD"].pop(), "no THRD record for thread 101"),
    (lambda r: r[b"THRD"][1].update(tid=999), "tid 999 is not a thread"),
    (lambda r: r[b"THRD"][0].pop("uids"), "uids: missing"),
    (lambda r: r[b"TASK"].clear(), "no TASK record"),
    (lambda r: r[b"MM  "].append(dict(r[b"MM  "][0], pid=5)), "pid 5 is not a live process"),
    (lambda r: r[b"FILE"][0]["fds"][0].update(desc=3), "description 3 is not in FDSC"),
    (lambda r: r[b"PBLK"][0]["runs"][0].__setitem__(0, 0x500000), "outside the mappings"),
    (lambda r: r[b"PBLK"][0].update(pid=7), "pid 7 is not a live process"),
    (lambda r: r[b"PBLK"].clear() or r[b"HEAD"][0].update(pids="x"), "HEAD record 0"),
    (lambda r: r[b"TREE"][0]["procs"][0].update(nstids=[PID]), "threads and nstids"),
    (lambda r: r[b"MM  "][0]["vmas"][0].update(end=0x400001), "not page-aligned"),
    (lambda r: r[b"MM  "][0]["vmas"][0].update(kind="shmem", obj=2), "not in SHMO"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(kind="file", deleted=True, blob=0), "FDAT"),
    (lambda r: r[b"TASK"][0]["prctl"].update(evil=1), "TASK record 0"),
    (lambda r: r[b"SIGS"][0]["actions"].update({99: bytes(32)}), "SIGS record 0"),
    (lambda r: r[b"TREE"].append(r[b"TREE"][0]), "TREE records"),
    (lambda r: r[b"HEAD"][0].update(root_pid=5), "root_pid or pids differ"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(posix=[{"pid": 7, "fd": 0, "mode": "READ",
                                                        "start": 0, "end": None}]),
     "a lock of pid 7"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(posix=[{"pid": PID, "fd": 0, "mode": "EVIL",
                                                        "start": 0, "end": None}]),
     "posix[0].mode: 'EVIL' is not one of READ, WRITE"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(extents=[[0, 4096]]), "lies past its size"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(memfd={"name": "m", "seals": 0}),
     "a memfd that is not"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(owner={"type": 9, "pid": PID, "nspid": PID}),
     "owner.type"),
    (lambda r: r[b"FDSC"][0]["descs"][0].update(ghost="../../etc/passwd"), "ghost"),
]


@pytest.mark.parametrize(("mutate", "words"), BAD)
def test_a_misfit_is_corrupt_and_named(mutate: Any, words: str) -> None:
    recs = copy.deepcopy(records())
    mutate(recs)
    with pytest.raises(ImageCorrupt) as exc:
        schema.check(Fake(recs))
    assert words in str(exc.value)
    assert "b'" not in str(exc.value)  # kinds as text


def test_extra_keys_of_per_process_records_are_accepted() -> None:
    recs = records()
    recs[b"TASK"][0]["new_field"] = {"from": "a newer engine"}
    recs[b"MM  "][0]["vmas"][0]["hugetlb"] = 2 << 20
    schema.check(Fake(recs))


# -- seals --------------------------------------------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "keys" / "image.key"
    monkeypatch.setenv("CRYO_KEY_FILE", str(path))
    seal._cache.clear()
    yield path
    seal._cache.clear()


def sealed_file(key: bytes | None) -> bytes:
    out = io.BytesIO()
    w = fmt.RecordWriter(out, b"CRYOTEST", seal=seal.sealer(key))
    w.write(b"DATA", {"a": 1})
    w.write(b"BLOB", b"x" * 100, raw=True)
    w.close()
    return out.getvalue()


def read(data: bytes) -> list[fmt.Record]:
    return list(fmt.read_records(io.BytesIO(data), b"CRYOTEST", "t", digest=True))


def test_key_is_made_once_private(key_file: Path) -> None:
    key = seal.load_key(create=True)
    assert key is not None and len(key) == 32
    st = key_file.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    seal._cache.clear()
    assert seal.load_key() == key
    key_file.chmod(0o644)
    seal._cache.clear()
    with pytest.raises(Exception, match="not a private file"):
        seal.load_key()


def test_seal_verifies_and_catches_edits(key_file: Path) -> None:
    key = seal.load_key(create=True)
    data = sealed_file(key)
    assert seal.problem(read(data), key, "t") is None
    assert fmt.encode_file(b"CRYOTEST", read(data)) == data  # byte for byte
    # an edit, checksums made good again: the seal no longer verifies
    recs = read(data)
    recs[0] = fmt.Record(b"DATA", {"a": 2})
    assert "changed after it was sealed" in str(seal.problem(read(fmt.encode_file(
        b"CRYOTEST", recs)), key, "t"))
    assert "another host's key" in str(seal.problem(read(data), bytes(32), "t"))
    unsealed = fmt.encode_file(b"CRYOTEST", recs[:2])
    assert "not sealed" in str(seal.problem(read(unsealed), key, "t"))


def test_nothing_may_follow_the_seal(key_file: Path) -> None:
    key = seal.load_key(create=True)
    recs = read(sealed_file(key))
    recs.append(fmt.Record(b"DATA", {"late": True}))
    with pytest.raises(ImageCorrupt, match="after the seal"):
        read(fmt.encode_file(b"CRYOTEST", recs))


def test_a_failing_verify_worker_fails_the_pass() -> None:
    seen = []

    def work(k: int) -> None:
        seen.append(k)
        if k == 1:
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        reader.run_parallel(work, 2)
    assert sorted(seen) == [0, 1]


# -- errors at the front ends -------------------------------------------------------------


def test_eperm_for_a_user_names_the_missing_privilege(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryo.errors import AccessDenied, translate_oserror

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    err = translate_oserror(PermissionError(1, "Operation not permitted"), resource="clone3")
    assert isinstance(err, AccessDenied)
    assert "needs root, or CAP_CHECKPOINT_RESTORE" in str(err) and "uid 1000" in str(err)


def test_a_bug_in_a_worker_is_reported_with_exit_70() -> None:
    from cryo.errors import ExitCode, ImageCorrupt, describe_failure

    try:
        {}["missing"]
    except KeyError as err:
        text, code = describe_failure(err)
    assert code == ExitCode.INTERNAL and "KeyError" in text and "Traceback" in text
    assert describe_failure(ImageCorrupt("bad"))[1] == ExitCode.IMAGE_CORRUPT


# -- sinks and readers ---------------------------------------------------------------------


def test_dir_sink_capabilities_side_files_and_modes(tmp_path: Path, key_file: Path) -> None:
    from cryo.errors import CryoError
    from cryo.image import records as R
    from cryo.image.reader import Image
    from cryo.image.sink import DirSink

    old = os.umask(0)
    try:
        sink = DirSink(str(tmp_path / "img"))
        assert sink.tracking is None and sink.wants_checksum is True
        assert os.path.basename(sink.tmp).startswith(f"img.tmp.{os.getpid()}.")
        sink.record(R.HEAD, {"arch": platform.machine(), "root_pid": PID, "pids": [PID]})
        with sink.side_file("sysvshm-7.bin") as f:
            f.write(b"segment bytes")
        assert sink.has_side("sysvshm-7.bin")
        with pytest.raises(CryoError):
            sink.side_file("sysvshm-7.bin")
        sink.commit()
    finally:
        os.umask(old)
    img = tmp_path / "img"
    assert img.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in img.iterdir()} == {
        "core.img": 0o600, "pages.img": 0o600, "sysvshm-7.bin": 0o600}
    image = Image(str(img))
    assert image.side_file("sysvshm-7.bin").read() == b"segment bytes"
    assert seal.problem(image.core_records, seal.load_key(), "core.img") is None
    image.close()
    (img / "sysvshm-7.bin").write_bytes(b"segment BYTES")
    image = Image(str(img))
    with pytest.raises(ImageCorrupt, match="does not match its digest"):
        image.side_file("sysvshm-7.bin")
    with pytest.raises(ImageCorrupt, match="not part of it"):
        image.side_file("sysvshm-8.bin")
    image.close()


# -- the whole grammar, walked -------------------------------------------------------------


def example(t: schema.Type) -> Any:
    """A value that fits ``t``, with every optional key of every map present."""
    if isinstance(t, schema.Struct):
        return {f.name: example(f.type) for f in t.fields}
    if isinstance(t, schema.Nullable):
        return example(t.inner)
    if isinstance(t, schema.AnyOf):
        return example(t.options[0])
    if isinstance(t, schema.List):
        n = t.size if t.size is not None else max(t.min, 1)
        return [example(t.item) for _ in range(n)]
    if isinstance(t, schema.Tuple):
        return [example(x) for x in t.items]
    if isinstance(t, schema.Dict):
        return {example(t.key): example(t.value)}
    if isinstance(t, schema.Path):
        return "/x"
    if isinstance(t, schema.Str):
        if t.choices:
            return t.choices[0]
        return {r"ghost-[0-9]+": "ghost-1", r"spmf-[0-9a-f]{64}": "spmf-" + "0" * 64,
                r"[A-Za-z0-9][A-Za-z0-9._+-]*": "a",
                r"(0x)?[0-9a-fA-F]{1,16}": "0"}.get(t.pattern or "", "a" if t.pattern is None
                                                    else "/status")
    if isinstance(t, schema.Bytes):
        return bytes(t.size or 1)
    if isinstance(t, schema.Int):
        return t.lo
    if isinstance(t, schema.Bool):
        return True
    if isinstance(t, schema.Num):
        return 1.5
    raise AssertionError(f"no example for {t!r}")


def wrong(t: schema.Type) -> Any:
    """A value that does not fit ``t``."""
    if isinstance(t, schema.Nullable):
        return wrong(t.inner)
    if isinstance(t, (schema.Str, schema.Bytes, schema.List, schema.Tuple, schema.Dict,
                      schema.Struct, schema.AnyOf)):  # fmt: skip
        return 3.25
    if isinstance(t, schema.Int):
        return t.hi + 1 if t.hi < schema.U64 else "7"
    return {"k": 1}  # Bool, Num


def places(t: schema.Type, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...],
                                                                         schema.Type]]:
    """Every (path, type) in a value made by example(t)."""
    yield path, t
    if isinstance(t, schema.Struct):
        for f in t.fields:
            yield from places(f.type, (*path, f.name))
    elif isinstance(t, schema.Nullable):
        yield from places(t.inner, path)
    elif isinstance(t, schema.List):
        yield from places(t.item, (*path, 0))
    elif isinstance(t, schema.Tuple):
        for i, x in enumerate(t.items):
            yield from places(x, (*path, i))


def _set(v: Any, path: tuple[Any, ...], x: Any) -> None:
    for k in path[:-1]:
        v = v[k]
    v[path[-1]] = x


KIND_BODIES = [(k.name, k.body) for k in schema.KINDS if isinstance(k.body, schema.Struct)]


@pytest.mark.parametrize(("name", "body"), KIND_BODIES, ids=[n for n, _ in KIND_BODIES])
def test_every_key_of_every_kind_is_checked(name: str, body: schema.Struct) -> None:
    """A record of each kind with every key there fits, and names none the grammar does
    not declare; each key (at any depth) given a value of the wrong type is refused,
    naming that key."""
    good = example(body)
    body.check(good)
    assert list(schema.undeclared(body, good)) == []
    n = 0
    for path, t in places(body):
        if not path:
            continue
        rec = copy.deepcopy(good)
        _set(rec, path, wrong(t))
        with pytest.raises(schema.Bad) as err:
            body.check(rec)
        assert err.value.where == tuple(f"[{p}]" if isinstance(p, int) else p for p in path)
        n += 1
    assert n >= len(body.fields)


def test_every_record_kind_the_engine_writes_is_declared() -> None:
    """Each driver's record kinds, and the image's own, have a declaration; each key of
    the maps inside records has a type and says what it is for where its name does
    not (the description map: every key but the common ones)."""
    from cryo.engine.drivers import DRIVERS
    from cryo.image import records as R

    kinds = {k for d in DRIVERS for k in d.kinds} | set(R.KINDS) | {b"MADE", b"SEAL", b"SIDE"}
    assert kinds - set(schema.BY_KIND) == set()
    common = {"id", "kind", "path", "pos", "flags", "ino", "dev", "mode", "size", "pid", "fd"}
    for f in schema.DESC.fields:
        assert f.doc or f.name in common, f"FDSC description key {f.name} says nothing"
    for t in schema.SUBSTRUCTS:
        assert t.name in schema.doc_tables()


def test_undeclared_keys_are_found_at_any_depth() -> None:
    recs = copy.deepcopy(records())
    recs[b"FDSC"][0]["descs"][0]["posix"] = [{"pid": PID, "fd": 0, "mode": "READ", "start": 0,
                                              "end": None, "owner_of": 1}]  # fmt: skip
    recs[b"FDSC"][0]["descs"][0]["surprise"] = 1
    found = schema.undeclared_keys(Fake(recs))
    assert "FDSC record 0: descs[0].surprise" in found
    assert "THRD record 0: from_a_newer_engine" in found
    with pytest.raises(ImageCorrupt, match=r"posix\[0\]: unknown keys \['owner_of'\]"):
        schema.check(Fake(recs))


def _variants(t: schema.Type) -> list[Any]:
    """Values near the edges of ``t``: some fit, most do not."""
    out: list[Any] = [wrong(t), None, True, 0, 1.0, "", b"", [], {}]
    if isinstance(t, schema.Int):
        out += [t.lo, t.hi, t.lo - 1, t.hi + 1, float(t.lo), False]
    if isinstance(t, schema.Num):
        out += [math.nan, math.inf, 2, False]
    if isinstance(t, schema.Str):
        out += ["\0", "x" * (t.max + 1), "zz not a choice", "!!", "/x", "x/", *t.choices]
    if isinstance(t, schema.Bytes):
        out += [bytes((t.size or 1) + 1), bytearray(t.size or 1)]
    if isinstance(t, (schema.List, schema.Tuple)):
        good = example(t)
        out += [good[:-1], [*good, good[0]] if good else [1], tuple(good)]
    if isinstance(t, schema.Struct):
        good = example(t)
        for f in t.fields:
            out.append({k: v for k, v in good.items() if k != f.name})
        out.append({**good, "undeclared-key": 1})
    return out


@pytest.mark.parametrize(("name", "body"), KIND_BODIES, ids=[n for n, _ in KIND_BODIES])
def test_the_fast_path_accepts_only_what_check_accepts(name: str, body: schema.Struct) -> None:
    """schema.fast (the compiled predicate the image check runs first) accepts a good
    record, and never a record that check refuses: every key at any depth given values
    at the edges of its type (wrong type, out of range, NUL, too long, bool for int,
    missing or undeclared keys) is accepted by the predicate only if check accepts it."""
    ok = schema.fast(body)
    good = example(body)
    assert ok(good)
    refused = 0
    for path, t in places(body):
        for x in _variants(t):
            rec = copy.deepcopy(good)
            if path:
                _set(rec, path, x)
            else:
                rec = x
            try:
                body.check(rec)
                fits = True
            except schema.Bad:
                fits = False
                refused += 1
            if ok(rec):
                assert fits, (path, x)
    assert refused >= len(body.fields)

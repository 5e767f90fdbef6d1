"""engine/translate.py: one path translation for every path of a restart."""

from __future__ import annotations

import pytest

from cryo.engine import translate
from cryo.engine.translate import Translation
from cryo.errors import ExitCode, Usage


def test_prefix_on_whole_components() -> None:
    t = Translation({"/data": "/mnt/data", "/data/big": "/scratch/big"})
    assert t.apply("/data") == "/mnt/data"
    assert t.apply("/data/x/y") == "/mnt/data/x/y"
    assert t.apply("/database/x") == "/database/x"  # not a component of /data
    assert t.apply("/data/big/f") == "/scratch/big/f"  # the longest prefix wins
    assert t.apply("/elsewhere") == "/elsewhere"


def test_trailing_slashes_and_root() -> None:
    t = Translation({"/a/": "/b/"})
    assert t.apply("/a/f") == "/b/f" and t.apply("/a") == "/b"
    r = Translation({"/": "/chroot"})
    assert r.apply("/etc/passwd") == "/chroot/etc/passwd" and r.apply("/") == "/chroot"
    assert Translation({"/old": "/"}).apply("/old/f") == "/f"
    assert Translation({"/old": "/"}).apply("/old") == "/"


def test_deleted_mark() -> None:
    t = Translation({"/usr/lib/libx.so": "/tmp/copy/1-libx.so"})
    assert t.apply("/usr/lib/libx.so (deleted)") == "/tmp/copy/1-libx.so"
    assert t.apply("/usr/lib/liby.so (deleted)") == "/usr/lib/liby.so (deleted)"


def test_parse_and_usage_errors() -> None:
    assert dict(Translation.parse(["/a=/b", "/c=/d=e"])) == {"/a": "/b", "/c": "/d=e"}
    for bad in (["/a"], ["=/b"], ["/a="], ["rel=/b"], ["/a=rel"]):
        with pytest.raises(Usage) as err:
            Translation.parse(bad)
        assert err.value.exit_code == ExitCode.USAGE


def test_of_options_is_shared() -> None:
    options: dict[str, object] = {"translate": {"/a": "/b"}}
    t = translate.of(options)
    assert translate.of(options) is t and options["translate"] is t
    t.add("/a/lib.so", "/copy/lib.so")
    assert translate.apply(options, "/a/lib.so") == "/copy/lib.so"
    assert translate.apply({}, "/x") == "/x"

"""cryo.linux.consts, net and mm make their enums the fast way (consts.fast_enum, on
enum._simple_enum): each must behave exactly as the plain ``class X(enum.IntEnum)`` /
``enum.IntFlag`` would."""

from __future__ import annotations

import enum
import itertools
import pickle
from typing import Any

from cryo.linux import consts, mm, net


def _enums() -> list[type[enum.Enum]]:
    return [v for mod in (consts, mm, net) for v in vars(mod).values() if isinstance(v, type)
            and issubclass(v, enum.Enum) and v.__module__ == mod.__name__]  # fmt: skip


def _plain(cls: type[enum.Enum]) -> Any:
    base = enum.IntFlag if issubclass(cls, enum.Flag) else enum.IntEnum
    make: Any = base
    return make(cls.__name__, [(k, int(v)) for k, v in cls.__members__.items()],  # type: ignore[arg-type]
                module=cls.__module__, qualname=cls.__qualname__)


def _show(m: Any) -> tuple[Any, ...]:
    return (m.name, int(m), str(m), repr(m), format(m), f"{m:x}", type(m).__mro__[1:])


def test_every_enum_behaves_as_the_plain_one() -> None:
    classes = _enums()
    assert len(classes) >= 35
    for cls in classes:
        plain = _plain(cls)
        assert type(cls) is type(plain) and cls.__mro__[1:] == plain.__mro__[1:], cls
        assert [(m.name, int(m)) for m in cls] == [(m.name, int(m)) for m in plain], cls
        values = [int(v) for v in cls.__members__.values()]
        probe = set(values) | {max(values) + 1}
        if issubclass(cls, enum.Flag):
            probe |= {a | b for a, b in itertools.combinations(values[:12], 2)} | {0, 1 << 40}
        for v in sorted(probe):
            try:
                got: Any = _show(cls(v))
            except ValueError:
                got = ValueError
            try:
                want: Any = _show(plain(v))
            except ValueError:
                want = ValueError
            assert got == want, (cls, v)
        for m in cls:
            p = plain[m.name]
            for op in (lambda x: x | 1, lambda x: x & 1, lambda x: ~x, lambda x: x + 1):
                assert _show(op(m)) == _show(op(p)) if isinstance(op(m), enum.Enum) else \
                    op(m) == op(p)  # fmt: skip
            assert pickle.loads(pickle.dumps(m)) is m

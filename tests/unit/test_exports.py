"""The public surface: what `cryo` exports exists, and nothing private leaks into it."""

import cryo


def test_all_names_resolve() -> None:
    for name in cryo.__all__:
        assert getattr(cryo, name) is not None, name
    assert callable(cryo.checkpoint) and callable(cryo.restart)
    assert cryo.checkpoint.__module__ == "cryo.engine.dump"


def test_errors_share_one_base() -> None:
    for name in cryo.__all__:
        obj = getattr(cryo, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, cryo.CryoError)

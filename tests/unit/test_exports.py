"""The public surface: exactly the documented names, each the object of the module that
implements it, and nothing private leaks into it."""

import importlib

import pytest

import cryo

API = {  # name -> the module it comes from
    "checkpoint": "cryo.engine.dump",
    "start_checkpoint": "cryo.engine.dump",
    "prepare": "cryo.engine.dump",
    "CheckpointSession": "cryo.engine.session",
    "restart": "cryo.engine.restore",
    "describe": "cryo.engine.show",
    "run": "cryo.launch",
}


def test_all_is_the_documented_api() -> None:
    errors = {n for n in cryo.__all__ if n.endswith(("Error", "Process", "Denied", "Missing",
                                                    "Exists", "Corrupt", "Incompatible",
                                                    "Unsupported", "Conflict", "Refused"))}
    assert set(cryo.__all__) == set(API) | errors | {"__version__"}
    assert not [n for n in cryo.__all__ if n.startswith("_") and n != "__version__"]


@pytest.mark.parametrize(("name", "module"), sorted(API.items()))
def test_each_name_is_its_modules_object(name: str, module: str) -> None:
    assert getattr(cryo, name) is getattr(importlib.import_module(module), name)
    assert callable(getattr(cryo, name))


def test_unknown_names_raise() -> None:
    with pytest.raises(AttributeError):
        _ = cryo.no_such_thing  # type: ignore[attr-defined]


def test_errors_share_one_base_and_are_the_error_modules() -> None:
    from cryo import errors

    found = 0
    for name in cryo.__all__:
        obj = getattr(cryo, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, cryo.CryoError), name
            assert obj is getattr(errors, name)
            found += 1
    assert found >= 10

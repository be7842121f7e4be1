"""The public surface is exactly what modelfetch/__init__.py exports."""

from __future__ import annotations

import modelfetch


def test_everything_in_all_is_exported_and_nothing_public_is_missing() -> None:
    exported = {name for name in dir(modelfetch) if not name.startswith("_")}
    # Submodules appear as attributes once imported; they are not part of the API.
    submodules = {
        "backend",
        "bus",
        "core",
        "hub",
        "hubconfig",
        "layout",
        "manager",
        "planner",
        "requests",
        "store",
        "transfer",
        "views",
        "testing",
        "cli",
        "config",
        "render",
        "server",
        "remote",
        "demo",
        "recovery",
    }
    assert set(modelfetch.__all__) - {"__version__"} == exported - submodules
    for name in modelfetch.__all__:
        assert getattr(modelfetch, name) is not None


def test_every_error_is_catchable_at_the_root() -> None:
    for name in modelfetch.__all__:
        obj = getattr(modelfetch, name)
        if isinstance(obj, type) and name.endswith("Error"):
            assert issubclass(obj, modelfetch.ModelfetchError)

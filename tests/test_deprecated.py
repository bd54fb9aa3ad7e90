"""Names that moved in 0.2 keep working until 0.3, each with a DeprecationWarning naming its new home."""
import importlib
import subprocess
import sys

import pytest

from fastdiff import _deprecated


def test_moved_modules_are_the_new_modules():
    """In a fresh interpreter (the import system caches modules): each old name imports, warns naming the new one,
    and is the very module object of the new name."""
    code = ("import warnings, importlib\n"
            f"moved = {dict(_deprecated.MOVED_MODULES)!r}\n"
            "for old, new in moved.items():\n"
            "    with warnings.catch_warnings(record=True) as w:\n"
            "        warnings.simplefilter('always')\n"
            "        module = importlib.import_module(old)\n"
            "    assert module is importlib.import_module(new), (old, module)\n"
            "    assert any(issubclass(x.category, DeprecationWarning) and new in str(x.message) for x in w), old\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module,old,new", [
    ("fastdiff.training", "load_classifier", "fastdiff.app.runs:load_classifier"),
    ("fastdiff.training", "load_discriminator", "fastdiff.app.runs:load_discriminator"),
    ("fastdiff.training", "build_discriminator", "fastdiff.app.runs:build_discriminator"),
    ("fastdiff.adapters.openai", "load_run", "fastdiff.app.runs:load_openai_run"),
    ("fastdiff.adapters.openai", "OpenAIRun", "fastdiff.app.runs:OpenAIRun"),
])
def test_moved_names(module, old, new):
    new_module, new_name = new.split(":")
    with pytest.warns(DeprecationWarning, match=f"{module}.{old} moved to {new_module}.{new_name}"):
        value = getattr(importlib.import_module(module), old)
    assert value is getattr(importlib.import_module(new_module), new_name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        getattr(importlib.import_module(module), "nope")

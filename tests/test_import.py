"""Importing the package where its C extension is missing says what to run."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_unbuilt_source_tree_gives_a_clear_message(tmp_path):
    """Regression: an unbuilt tree failed with "cannot import name '_core'
    from partially initialized module 'sermas_bus' (most likely due to a
    circular import)"."""
    shutil.copytree(ROOT / "sermas_bus", tmp_path / "sermas_bus",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import sermas_bus"
    res = subprocess.run([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode != 0
    assert "C extension (sermas_bus._core) is not built" in res.stderr, res.stderr
    assert "make install" in res.stderr and "partially initialized" not in res.stderr.splitlines()[-1]

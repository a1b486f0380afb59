"""The documentation: the quickstart notebook runs, the Sphinx build is clean.

Both need the test extras (``pip install -e '.[test]'``, as ``make test`` does):
nbclient, nbformat and ipykernel for the notebook, sphinx and myst-parser for the
build.  Without them the tests are skipped, saying what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sermas_bus

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOK = DOCS / "examples" / "quickstart.ipynb"
# the directory holding the sermas_bus these tests import: the kernel must import the same
PACKAGE_PARENT = str(Path(sermas_bus.__file__).resolve().parent.parent)
KERNEL_NAME = "sermas-bus-docs-test"


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[test]' (make test does)")


def _pythonpath() -> str:
    rest = os.environ.get("PYTHONPATH")
    return PACKAGE_PARENT + (os.pathsep + rest if rest else "")


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec for this interpreter, found first through JUPYTER_PATH, so the
    notebook runs on the Python (and the sermas_bus) under test whatever other
    'python3' kernels the machine has."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sermas_bus docs test",
        "language": "python",
        "env": {"PYTHONPATH": _pythonpath()},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")   # jupyter_core's path-migration warning
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return KERNEL_NAME


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def test_notebook_is_committed_without_outputs():
    _require("nbformat")
    import nbformat

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"code cells {dirty} of {NOTEBOOK.name} hold outputs: clear them before committing"


@pytest.mark.timeout(180)
def test_quickstart_notebook_runs(kernel):
    _require("nbclient", "nbformat", "ipykernel")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    started = time.monotonic()
    NotebookClient(nb, kernel_name=kernel, timeout=60, startup_timeout=60,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    took = time.monotonic() - started

    out = "\n".join(_stdout(c) for c in nb.cells if c.cell_type == "code")
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    lines = out.splitlines()

    assert any(line.startswith("broker: ws://127.0.0.1:") and line.endswith("/mqtt") for line in lines), out
    assert any(line.startswith("tokens: http://127.0.0.1:") for line in lines), out
    assert "connected: True" in lines
    assert "token for: my-service - expires in 720 min" in lines   # 12 h, as the platform
    assert "subscribed to app/myapp/dialogue/messages/+" in lines
    # the frontend's three events reached the callback, in order; the service's own did not (noLocal)
    said = [line for line in lines if line.startswith("[s1] ")]
    assert said == ["[s1] user: Hello!", "[s1] user: What can you do?", "[s1] user: Thanks"], out
    assert "wait_for: Are you there?" in lines
    assert [line for line in lines if line.startswith("events: ")] == [
        f"events: dialogue.messages {{'appId': 'myapp', 'sessionId': 's3'}} {t}" for t in ("one", "two", "three")]
    assert "app/:appId/dialogue/messages/:sessionId" in lines
    assert "app/myapp/dialogue/messages/s1" in lines
    assert "app/myapp/dialogue/messages/+" in lines
    assert "('dialogue.messages', {'appId': 'myapp', 'sessionId': 's1'})" in lines
    assert any(line.startswith(f"{len(sermas_bus.topics.names())} topics, e.g. ") for line in lines), out
    assert "refused: AuthRejected" in lines
    assert [line for line in lines if line.startswith("paho face: ")] == [
        'paho face: app/myapp/dialogue/messages/s4 {"sessionId":"s4","actor":"agent","text":"%s"}' % t
        for t in ("ping", "pong")]
    assert lines[-1] == "closed"
    assert took < 120, f"the notebook took {took:.0f} s"


@pytest.mark.timeout(180)
def test_sphinx_build_has_no_warnings(tmp_path):
    _require("sphinx", "myst_parser")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        cwd=str(ROOT), capture_output=True, text=True, timeout=170,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    html = tmp_path / "html"
    for page in ("index", "quickstart", "sermas", "migration", "threading", "design", "api/client"):
        assert (html / f"{page}.html").is_file(), f"{page}.html was not built"
    # autodoc really documented the API (an import failure would leave the page empty)
    client_page = (html / "api" / "client.html").read_text(encoding="utf-8")
    for name in ("sermas_bus.client.Client", "wait_for_publish", "MQTTMessage"):
        assert name in client_page, name
    assert took < 60, f"the Sphinx build took {took:.0f} s"

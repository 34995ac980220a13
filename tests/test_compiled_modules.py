"""The request path's plain Python modules run compiled (plano_fast/_compiled.py, setup.py).

The list in ``plano_fast._compiled.COMPILED_MODULES`` is the one setup.py builds: here each
listed module must be imported from its ``.so``, and no other ``.py`` may have one (so the
list and the build cannot drift apart).  A build older than its ``.py`` and the pure switch
both run the ``.py``, checked on a copy of the package in a temporary source tree.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plano_fast import _compiled

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "plano_fast"
PURE = os.environ.get(_compiled.PURE_ENV) == "1"

try:
    from plano_fast.wire import _scan  # noqa: F401 - any compiled module: a compiler was there
except ImportError:
    BUILT = False
else:
    BUILT = True

needs_build = pytest.mark.skipif(not BUILT, reason="extension not built")


def _is_built(file: str | None) -> bool:
    return file is not None and file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@needs_build
def test_every_listed_module_is_imported_from_its_build() -> None:
    if PURE:
        pytest.skip("pure scanner forced by the environment")
    assert _compiled.stale_modules() == []
    for name in _compiled.COMPILED_MODULES:
        module = importlib.import_module(name)
        assert _is_built(module.__file__), (name, module.__file__)


def test_only_the_listed_python_modules_are_built() -> None:
    compiled_from_py = set()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for so in PKG.rglob(f"*{suffix}"):
            stem = so.name[: -len(suffix)]
            if (so.parent / f"{stem}.py").exists() and not (so.parent / f"{stem}.pyx").exists():
                compiled_from_py.add(".".join(so.relative_to(ROOT).parts[:-1] + (stem,)))
    assert compiled_from_py <= set(_compiled.COMPILED_MODULES)
    for name in _compiled.COMPILED_MODULES:
        assert _compiled.source_path(name).is_file(), name  # a listed module that moved or went


def _source_tree_copy(tmp_path: Path) -> Path:
    """The package (with its builds) under ``tmp_path``, ``setup.py`` beside it: a source tree."""
    shutil.copytree(PKG, tmp_path / "plano_fast", ignore=shutil.ignore_patterns("*.c", "*.html", "__pycache__"))
    shutil.copy2(ROOT / "setup.py", tmp_path / "setup.py")
    return tmp_path


def _imported_files(tree: Path, names: list[str], **env: str) -> tuple[list[str], str]:
    code = "import importlib, sys; [print(importlib.import_module(n).__file__) for n in sys.argv[1:]]"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", _compiled.PURE_ENV)}
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=tree, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.split(), out.stderr


@needs_build
def test_a_build_older_than_its_source_is_not_run(tmp_path: Path) -> None:
    tree = _source_tree_copy(tmp_path)
    edited, untouched = "plano_fast.gateway.relay", "plano_fast.http_server"
    relay_py = tree / "plano_fast" / "gateway" / "relay.py"
    relay_py.write_text(relay_py.read_text() + "\nEDITED = True\n")  # written after the copied .so
    files, stderr = _imported_files(tree, [edited, untouched])
    assert files[0] == str(relay_py)
    assert _is_built(files[1]) and files[1].startswith(str(tree))
    assert f"plano_fast: {edited} runs from relay.py: its compiled build is older" in stderr
    assert "http_server" not in stderr


@needs_build
def test_the_pure_switch_runs_every_source(tmp_path: Path) -> None:
    tree = _source_tree_copy(tmp_path)
    names = list(_compiled.COMPILED_MODULES)
    files, stderr = _imported_files(tree, names, **{_compiled.PURE_ENV: "1"})
    assert files == [str(tree / "plano_fast" / _compiled.source_path(n).relative_to(PKG)) for n in names]
    assert stderr == ""

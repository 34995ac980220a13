"""The request pipeline's own import rules (plano_fast/gateway), read from the source files.

The project-wide rules (mode modules never import each other, the protocol never imports
stores or billing, ...) are tests/test_import_rules.py; these are the pipeline's inside.

Checked on the ``import`` statements themselves (those under ``TYPE_CHECKING`` included),
so a rule cannot hold only because some other module happened to be imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "plano_fast"
MODES = sorted(p for p in (PKG / "gateway" / "modes").glob("*.py") if p.stem != "__init__")


def imported(path: Path) -> set[str]:
    """Every module ``path`` names in an import: ``from a import b`` gives a and a.b."""
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_imported_reads_relative_and_from_imports() -> None:
    # the helper itself: a rule checked with a reader that sees nothing would always pass
    names = imported(PKG / "gateway" / "modes" / "gemini.py")
    assert "plano_fast.gateway.routed" in names
    assert "plano_fast.gateway.routed.RoutedExchange" in names


def test_there_is_one_module_per_mode() -> None:
    assert [p.stem for p in MODES] == ["config", "firewall", "gemini", "managed"]


def test_shared_pipeline_modules_never_import_a_mode() -> None:
    for name in ("relay.py", "phases.py", "routed.py", "endpoints.py", "upstream_request.py"):
        bad = {m for m in imported(PKG / "gateway" / name) if m.startswith("plano_fast.gateway.modes")}
        assert not bad, f"gateway/{name} imports a mode: {sorted(bad)}"


def test_wire_level_request_builder_holds_no_policy() -> None:
    # the upstream request bytes: headers, credentials and body in, bytes out
    allowed = ("plano_fast.errors", "plano_fast.config", "plano_fast.credentials", "plano_fast.upstream",
               "plano_fast.wire")  # (wire: the byte helpers, formatted lines)
    names = {n for n in imported(PKG / "gateway" / "upstream_request.py")
             if not n.startswith(("__future__", "typing"))}
    assert names and all(n.startswith(allowed) for n in names), sorted(names)

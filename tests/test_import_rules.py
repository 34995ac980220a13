"""The layering rules, checked by reading the imports (``ast`` for Python, a line pattern
for Cython); nothing under test is imported, so no import side effect can hide a rule.

A module "imports" what loading it executes -- its module-level imports, followed through
the package (parents' ``__init__`` included) -- plus the imports inside its own functions
and what those load.  ``if TYPE_CHECKING:`` imports are left out: they never run.

The rules (ARCHITECTURE.md / STYLE.md habits 2 and 3):

* protocol (the socket-level layer: ``http_server.py`` and ``upstream.py``, and what they
  load) never imports the stores or billing;
* the wire codecs (``wire/``: the compiled scanners, header and request parsers and their
  pure twins) import only the standard library and each other -- byte code with no I/O,
  so protocol, modes and billing (``usage reprice`` re-reads stored usage) may all use them;
* the scanner (``scan.py``, ``_scan_py.py``, ``_scan.pyx`` and its includes) never imports
  asyncio;
* billing never imports the protocol;
* converters (``convert/``) do no I/O: no asyncio, socket, aiohttp, asyncpg or sqlite3;
* config never imports routing (routing imports config);
* mode modules never import each other (direct imports): every module under
  ``gateway/modes/``.

Each rule is also fed a synthetic violating module, so a rule that cannot fail fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "plano_fast"
SUFFIXES = (".py", ".pyx", ".pxi", ".pxd")
# Cython: `import x`, `from x import y, z`, `cimport x`, `from x cimport y` at any indent.
_CYTHON_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+([\w.]+)[ \t]+c?import[ \t]+\(?([\w., \t]*)|c?import[ \t]+([\w.]+))", re.M
)


@dataclass(frozen=True)
class Source:
    path: str  # relative to the repository, posix: "plano_fast/convert/errors.py"
    text: str

    @property
    def module(self) -> str:
        parts = self.path.rsplit(".", 1)[0].split("/")
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    @property
    def is_package(self) -> bool:
        return self.path.endswith("/__init__.py")

    @property
    def rel(self) -> str:
        """The path inside the package ("convert/errors.py"), what rules match on."""
        return self.path.split("/", 1)[1]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def read_imports(src: Source) -> tuple[set[str], set[str]]:
    """(module-level, function-level) imported names, absolute; a ``from m import n``
    yields ``m`` and ``m.n`` (the graph keeps whichever is a module)."""
    top: set[str] = set()
    lazy: set[str] = set()
    if not src.path.endswith(".py"):
        for m in _CYTHON_IMPORT.finditer(src.text):
            if m.group(3):
                top.add(m.group(3))
                continue
            top.add(m.group(1))
            for name in m.group(2).split(","):
                name = name.split()[0] if name.split() else ""
                if name:
                    top.add(f"{m.group(1)}.{name}")
        return top, lazy
    package = src.module if src.is_package else src.module.rpartition(".")[0]

    def absolute(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, out: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_node(other, out)
                continue
            visit_node(child, out)

    def visit_node(node: ast.AST, out: set[str]) -> None:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(node, lazy)
        else:
            visit(node, out)

    visit(ast.parse(src.text, filename=src.path), top)
    return top, lazy


@dataclass
class ImportGraph:
    sources: dict[str, Source] = field(default_factory=dict)  # module name -> source
    top: dict[str, set[str]] = field(default_factory=dict)
    lazy: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, sources: Iterable[Source]) -> ImportGraph:
        g = cls()
        for src in sources:
            g.sources[src.module] = src
            g.top[src.module], g.lazy[src.module] = read_imports(src)
        return g

    @classmethod
    def of_package(cls, root: Path = ROOT) -> ImportGraph:
        files = sorted(p for p in (root / PACKAGE).rglob("*") if p.suffix in SUFFIXES and p.is_file())
        return cls.of(Source(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in files)

    def known(self, name: str) -> str | None:
        """The package module ``name`` refers to (``m.n`` where n is not a module -> m)."""
        while name:
            if name in self.sources:
                return name
            name = name.rpartition(".")[0]
        return None

    def _edges(self, module: str, names: set[str]) -> Iterable[str]:
        for name in names:
            target = self.known(name)
            if target is None:
                yield name  # outside the package (asyncio, ...): a leaf
                continue
            yield target
            parent = target.rpartition(".")[0]
            while parent:  # importing a.b.c runs a/__init__ and a/b/__init__
                if parent in self.sources and parent != module:
                    yield parent
                parent = parent.rpartition(".")[0]

    def reaches(self, module: str, transitive: bool = True) -> dict[str, list[str]]:
        """Every name ``module`` imports -> the chain of modules it is imported through."""
        first = set(self._edges(module, self.top[module] | self.lazy[module]))
        chains: dict[str, list[str]] = {name: [module] for name in first}
        if not transitive:
            return chains
        todo = [n for n in first if n in self.sources]
        while todo:
            current = todo.pop()
            for name in self._edges(current, self.top[current]):
                if name not in chains and name != module:
                    chains[name] = chains[current] + [current]
                    if name in self.sources:
                        todo.append(name)
        return chains

    def modules(self, *patterns: str) -> list[str]:
        return sorted(m for m, s in self.sources.items() if any(fnmatchcase(s.rel, p) for p in patterns))


@dataclass(frozen=True)
class Rule:
    name: str
    subjects: Callable[[ImportGraph], list[str]]
    forbidden: Callable[[ImportGraph, str], Iterable[str]]  # (graph, subject) -> names
    transitive: bool = True

    def violations(self, graph: ImportGraph) -> list[str]:
        out: list[str] = []
        for subject in self.subjects(graph):
            banned = tuple(self.forbidden(graph, subject))
            for name, chain in sorted(self.reaches(graph, subject).items()):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    out.append(" -> ".join(chain + [name]))
        return out

    def reaches(self, graph: ImportGraph, subject: str) -> dict[str, list[str]]:
        return graph.reaches(subject, self.transitive)


def _fixed(*names: str) -> Callable[[ImportGraph, str], tuple[str, ...]]:
    return lambda graph, subject: names


PROTOCOL = ("http_server.py", "upstream.py")
WIRE = ("wire/*",)


def _outside_wire(graph: ImportGraph, subject: str) -> list[str]:
    return [m for m in graph.modules("*") if m != "plano_fast" and not m.startswith("plano_fast.wire")]
SCANNER = ("scan.py", "_scan_py.py", "_scan.pyx", "_scan*.pxi", "wire/*scan*")
MODES_DIR = "gateway/modes"


def mode_modules(graph: ImportGraph) -> list[str]:
    return [m for m in graph.modules(MODES_DIR + "/*") if not graph.sources[m].is_package]


def _other_modes(graph: ImportGraph, subject: str) -> list[str]:
    return [m for m in mode_modules(graph) if m != subject]


RULES = {
    "protocol never imports stores or billing": Rule(
        "protocol", lambda g: g.modules(*PROTOCOL), _fixed("plano_fast.store", "plano_fast.billing")),
    "wire imports only the standard library and itself": Rule(
        "wire", lambda g: g.modules(*WIRE), _outside_wire),
    "scanner never imports asyncio": Rule(
        "scanner", lambda g: g.modules(*SCANNER), _fixed("asyncio")),
    "billing never imports the protocol": Rule(
        "billing", lambda g: g.modules("billing/*"), lambda g, s: g.modules(*PROTOCOL)),
    "converters do no I/O": Rule(
        "converters", lambda g: g.modules("convert/*"),
        _fixed("asyncio", "socket", "aiohttp", "asyncpg", "sqlite3")),
    "config never imports routing": Rule(
        "config", lambda g: g.modules("config/*", "config.py"), _fixed("plano_fast.routing")),
    "mode modules never import each other": Rule(
        "modes", mode_modules, _other_modes, transitive=False),
}

@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return ImportGraph.of_package()


@pytest.mark.parametrize("rule", list(RULES))
def test_rule_holds(graph: ImportGraph, rule: str) -> None:
    assert RULES[rule].subjects(graph), f"{rule}: no module matches (renamed?)"
    assert RULES[rule].violations(graph) == []


def test_every_rule_covers_the_modules_it_names(graph: ImportGraph) -> None:
    """The patterns still match the files (a rename must not empty a rule silently)."""
    names = {r.name: set(r.subjects(graph)) for r in RULES.values()}
    # Layout-tolerant where the wire work moves the compiled modules into plano_fast/wire/.
    protocol = names["protocol"]
    assert "plano_fast.http_server" in protocol
    assert "plano_fast.upstream" in protocol, protocol
    assert {"plano_fast.wire._head", "plano_fast.wire._request", "plano_fast.wire._scan_py"} <= names["wire"]
    assert len([m for m in names["scanner"] if "scan" in m]) >= 3, names["scanner"]  # shim, twin, .pyx
    assert "plano_fast.billing.flusher" in names["billing"]
    assert "plano_fast.convert.errors" in names["converters"]
    assert "plano_fast.config.loader" in names["config"]
    assert len(names["modes"]) >= 4


# --------------------------------------------------------------------------- rules can fail

# A minimal package: each rule's subject, its innocent neighbours, and the forbidden targets.
BASE = {
    "plano_fast/__init__.py": "",
    "plano_fast/errors.py": "import json\n",
    "plano_fast/http_server.py": "import asyncio\nfrom plano_fast import errors\nfrom plano_fast._request import parse\n",
    "plano_fast/_request.pyx": "from plano_fast._bytes cimport view\n",
    "plano_fast/_bytes.pxd": "",
    "plano_fast/scan.py": "from plano_fast import _scan_py\n",
    "plano_fast/_scan_py.py": "import struct\n",
    "plano_fast/_scan.pyx": "from plano_fast._scan_py import Usage\n",
    "plano_fast/store/__init__.py": "import asyncio\n",
    "plano_fast/billing/__init__.py": "",
    "plano_fast/billing/flusher.py": "import asyncio\nfrom plano_fast.store import Store\n",
    "plano_fast/convert/__init__.py": "from plano_fast.convert.errors import convert_error\n",
    "plano_fast/convert/errors.py": "import json\nfrom plano_fast.errors import ApiFormat\n",
    "plano_fast/config/__init__.py": "from plano_fast.config.loader import load_config\n",
    "plano_fast/config/loader.py": "import yaml\n",
    "plano_fast/routing.py": "from plano_fast.config import ModelProvider\n",
    "plano_fast/gateway/__init__.py": "",
    "plano_fast/gateway/relay.py": "from plano_fast import errors\n",
    "plano_fast/gateway/modes/__init__.py": "",
    "plano_fast/gateway/modes/config.py": "from plano_fast.gateway.relay import Exchange\n",
    "plano_fast/gateway/modes/firewall.py": "from plano_fast import errors\n",
    "plano_fast/gateway/modes/gemini.py": "import json\n",
    "plano_fast/gateway/modes/managed.py": "import asyncio\n",
    "plano_fast/managed/__init__.py": "",
    "plano_fast/managed/exchange.py": "import asyncio\n",
}

# rule -> (file, added text) that violates it, directly or through another module.
VIOLATIONS = {
    "protocol never imports stores or billing": ("plano_fast/http_server.py", "from plano_fast.store import Store\n"),
    "wire imports only the standard library and itself": ("plano_fast/wire/_head_py.py", "from plano_fast import errors\n"),
    "scanner never imports asyncio": ("plano_fast/_scan.pyx", "cimport asyncio\n"),
    "billing never imports the protocol": ("plano_fast/billing/flusher.py", "from plano_fast.http_server import Request\n"),
    "converters do no I/O": ("plano_fast/convert/errors.py", "import sqlite3\n"),
    "config never imports routing": ("plano_fast/config/loader.py", "def f():\n    from plano_fast.routing import Router\n"),
    "mode modules never import each other": ("plano_fast/gateway/modes/firewall.py", "from plano_fast.gateway.modes.config import ConfigExchange\n"),
}


def synthetic(changes: dict[str, str]) -> ImportGraph:
    files = {**BASE}
    for path, text in changes.items():
        files[path] = files.get(path, "") + text
    return ImportGraph.of(Source(p, t) for p, t in files.items())


def test_the_synthetic_package_breaks_no_rule() -> None:
    g = synthetic({})
    assert {name: rule.violations(g) for name, rule in RULES.items()} == {name: [] for name in RULES}


@pytest.mark.parametrize("rule", list(VIOLATIONS))
def test_rule_fails_on_a_violation(rule: str) -> None:
    path, text = VIOLATIONS[rule]
    found = RULES[rule].violations(synthetic({path: text}))
    assert any(v.startswith(Source(path, "").module + " -> ") for v in found), found


@pytest.mark.parametrize("rule", list(VIOLATIONS))
def test_rule_fails_on_a_violation_one_module_away(rule: str) -> None:
    """Through a neighbour the subject imports (the direct-only modes rule excepted)."""
    path, text = VIOLATIONS[rule]
    subject = Source(path, "").module
    middle = text.replace("def f():\n    ", "").replace("cimport", "import")
    g = synthetic({path: "from plano_fast import middle\n", "plano_fast/middle.py": middle})
    found = RULES[rule].violations(g)
    if RULES[rule].transitive:
        assert any(v.startswith(f"{subject} -> plano_fast.middle -> ") for v in found), found
    else:
        assert found == []


def test_type_checking_imports_do_not_count_and_lazy_ones_do() -> None:
    rule = RULES["config never imports routing"]
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from plano_fast.routing import Router\n"
    assert rule.violations(synthetic({"plano_fast/config/loader.py": guarded})) == []
    lazy = "def f():\n    import plano_fast.routing\n"
    assert rule.violations(synthetic({"plano_fast/config/loader.py": lazy})) == [
        "plano_fast.config.loader -> plano_fast.routing"
    ]


def test_relative_imports_and_parent_packages() -> None:
    rule = RULES["converters do no I/O"]
    # `from . import x` resolves inside the package; importing a.b runs a/__init__ too.
    found = rule.violations(synthetic({
        "plano_fast/convert/errors.py": "from . import _io\n",
        "plano_fast/convert/_io.py": "import socket\n",
    }))
    assert "plano_fast.convert.errors -> plano_fast.convert._io -> socket" in found
    assert "plano_fast.convert._io -> socket" in found
    assert RULES["billing never imports the protocol"].violations(synthetic({
        "plano_fast/billing/flusher.py": "from plano_fast.wire.head import parse\n",
        "plano_fast/wire/__init__.py": "from plano_fast.http_server import Request\n",
        "plano_fast/wire/head.py": "",
    }))  # loading wire/head runs its package, which imports http_server


def test_modes_rule_follows_the_gateway_modes_directory() -> None:
    g = synthetic({
        "plano_fast/gateway/__init__.py": "",
        "plano_fast/gateway/modes/__init__.py": "from plano_fast.gateway.modes import config, firewall\n",
        "plano_fast/gateway/modes/config.py": "from plano_fast.gateway import plan\n",
        "plano_fast/gateway/modes/firewall.py": "from plano_fast.gateway.modes.config import rewrite\n",
        "plano_fast/gateway/plan.py": "",
    })
    assert mode_modules(g) == [f"plano_fast.gateway.modes.{m}" for m in ("config", "firewall", "gemini", "managed")]
    assert RULES["mode modules never import each other"].violations(g) == [
        "plano_fast.gateway.modes.firewall -> plano_fast.gateway.modes.config"
    ]

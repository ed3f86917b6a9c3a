"""The house keeps its plan: the README's layout table is the tree, each room imports only
the rooms beneath it, no two modules import each other, and comments state their facts."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tracer", "ledger", "store", "spool", "exporters", "cli", "lab")

# Which rooms each room may import (besides itself). The pure ones come first.
ALLOWED = {
    "tracer": set(),
    "ledger": {"tracer"},
    "spool": {"tracer", "store"},  # store.files: atomic writes
    "store": {"tracer", "ledger"},
    "lab": {"tracer", "ledger"},
    "exporters": {"tracer", "ledger", "store", "spool"},
    "cli": {"tracer", "ledger", "store", "spool", "exporters", "lab"},
}


def _tracked_dirs() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}


def _layout_rows() -> dict[str, str]:
    """README "Layout": folder → its "imported as" cell."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):].split("\n## ")[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([\w/]+)/` \|\s*(`[\w.]+`)?\s*\|", table, re.M)}


def test_the_readme_layout_table_is_the_tree() -> None:
    rows = _layout_rows()
    top = {name for name in rows if "/" not in name}
    assert top == _tracked_dirs()
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    # Every installed package has its row, imported under the name the row gives.
    assert {f"`{name}`" for name in package_dir} == {v for v in rows.values() if v}
    for name, folder in package_dir.items():
        assert rows[folder] == f"`{name}`"


def _imports(path: Path) -> set[str]:
    """The memledger modules a file imports, for types only (TYPE_CHECKING) too."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memledger."):
            base = node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("memledger."))
    return out


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            if "migrations" in rel.parts:
                continue
            name = "memledger." + ".".join(rel.parts).removesuffix(".__init__")
            out[name] = path
    return out


def test_each_room_imports_only_the_rooms_beneath_it() -> None:
    wrong = []
    for name, path in _modules().items():
        room = name.split(".")[1]
        for imported in _imports(path):
            other = imported.split(".")[1]
            if other != room and other not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert wrong == []


def test_no_two_modules_import_each_other() -> None:
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own modules is no circle of meaning.
    assert [c for c in cycles if "__init__" not in c] == []


def test_comments_state_their_facts() -> None:
    """No pointer to a document outside the repository (the developers' notes)."""
    pointer = re.compile(r"kernel-facts|lab-notes|anchors [A-Z]\.\d|§\s?\d")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in (*PACKAGES, "tests", "bench", "deploy")
             for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".service", ".yml", ".md")
             and "fixtures" not in p.parts
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if pointer.search(line) and p.name != "test_layout.py"]
    assert found == []


def test_every_output_goes_through_its_edge() -> None:
    """A command prints with exporters.terminal's console (no markup read from data,
    control characters escaped) and logs with exporters.logs' formatter (one line a
    record): no other module makes a rich Console or configures logging itself."""
    edges = {"console": ROOT / "exporters" / "terminal.py", "basicConfig": ROOT / "exporters" / "logs.py"}
    wrong = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                for call, edge in (("Console", edges["console"]), ("basicConfig", edges["basicConfig"])):
                    if name == call and path != edge:
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {call}()")
    assert wrong == []

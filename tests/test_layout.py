"""The shape of the package, read from its source with ``ast`` (nothing is imported): modules
stay small, layers point downwards as DESIGN.md draws them, the CLI and the service use only
public names of the library, and no two modules import each other -- not at module level,
and not through an import tucked inside a function either (such an import only hides the
circle from Python at import time; the modules still depend on each other)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "speakerdb"
MAX_LINES = 800

# Which of the library's packages each layer may import (itself always; the top-level
# modules such as speakerdb.errors, scoring, _identity, _results are shared by every layer).
# Imports only point downwards: cli and service over enroll, enroll over diarize, model and
# storage; model knows nothing of SQL, storage nothing of torch or of the model layer.
LAYERS = {
    "cli": {"cli", "service", "enroll", "live", "diarize", "model", "decisions", "storage"},
    "service": {"service", "enroll", "live", "diarize", "model", "decisions", "storage"},
    "enroll": {"enroll", "live", "diarize", "model", "decisions", "storage"},
    "live": {"live", "diarize", "model", "decisions"},  # sessions: decisions passed in
    "diarize": {"diarize", "model", "decisions"},
    "model": {"model", "decisions"},
    # How answers are decided (options, score scale, policy): beside the top-level scoring,
    # calibration and result modules, under every layer that decides; no SQL, no torch.
    "decisions": {"decisions"},
    "storage": {"storage"},
    "migrations": {"migrations", "storage"},
}
SHELLS = ("cli", "service")  # may use only the library's public names
ENTRY_POINTS = {"speakerdb.__main__"}  # ``python -m speakerdb`` runs the CLI


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module imported (the module a name comes from, or the name itself)
    names: tuple[str, ...]  # names taken from the target (``from target import names``)
    line: int
    top_level: bool  # runs when the importer is imported (not inside a function)
    type_checking: bool  # inside ``if TYPE_CHECKING:`` (never runs)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "versions" not in p.relative_to(PACKAGE).parts  # migration scripts: frozen history
    }


MODULES = source_files()


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports_of(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[tuple[str, tuple[str, ...]]]:
        if isinstance(node, ast.Import):
            return [(alias.name, ()) for alias in node.names]
        base = node.module or ""
        if node.level:
            package = name.split(".") if is_package else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        out: list[tuple[str, tuple[str, ...]]] = []
        plain: list[str] = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:  # ``from package import module``
                out.append((sub, ()))
            else:
                plain.append(alias.name)
        if plain:
            out.append((base, tuple(plain)))
        return out

    def walk(nodes: list[ast.stmt], top: bool, checking: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target, names in targets(node):
                    found.append(Import(name, target, names, node.lineno, top, checking))
            elif isinstance(node, ast.If):
                inside = checking or _is_type_checking(node.test)
                walk(node.body, top, inside)
                walk(node.orelse, top, checking)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                walk(node.body, False, checking)
            elif isinstance(node, ast.ClassDef):
                walk(node.body, top, checking)
            else:
                for field in ("body", "orelse", "finalbody"):
                    walk(getattr(node, field, []), top, checking)
                for handler in getattr(node, "handlers", []):
                    walk(handler.body, top, checking)
                for case in getattr(node, "cases", []):
                    walk(case.body, top, checking)

    walk(tree.body, True, False)
    return found


IMPORTS = [i for name, path in MODULES.items() for i in imports_of(name, path)]


def layer(module: str) -> str | None:
    """The package of the library a module belongs to (None for top-level modules)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or module in ("speakerdb." + k for k in LAYERS) else None


def is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def graph(top_level_only: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for i in IMPORTS:
        if i.type_checking or (top_level_only and not i.top_level):
            continue
        if i.target in MODULES and i.target != i.importer:
            edges[i.importer].add(i.target)
    return edges


def test_the_walk_sees_the_package() -> None:
    # Guards the test itself: an empty walk would pass every assertion below.
    assert "speakerdb.enroll._facade" in MODULES and "speakerdb.cli" in MODULES
    assert any(
        i.importer == "speakerdb.cli._app" and i.target.startswith("speakerdb.cli.")
        for i in IMPORTS
    )
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long(module: str) -> None:
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_cli_and_service_use_only_public_names() -> None:
    wrong = []
    for i in IMPORTS:
        shell = layer(i.importer)
        if shell not in SHELLS or not i.target.startswith("speakerdb"):
            continue
        if layer(i.target) == shell:
            continue
        private_names = [n for n in i.names if n.startswith("_") and not n.endswith("__")]
        if is_private(i.target) or private_names:
            wrong.append(f"{i.importer}:{i.line} imports {i.target} {private_names or ''}")
    assert not wrong, "\n".join(wrong)


def test_layers_point_downwards() -> None:
    wrong = []
    for i in IMPORTS:
        here = layer(i.importer)
        if here is None:
            continue
        if here == "storage" and i.target.split(".")[0] == "torch":
            wrong.append(f"{i.importer}:{i.line} imports torch")
        if not i.target.startswith("speakerdb."):
            continue
        there = layer(i.target)
        if there is not None and there not in LAYERS.get(here, {here}):
            wrong.append(f"{i.importer}:{i.line} ({here}) imports {i.target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_nothing_below_imports_the_shells() -> None:
    # The CLI and the service are the outer shells: they may use each other (``serve``,
    # ``--server``), nothing else uses them.
    wrong = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in IMPORTS
        if layer(i.target) in SHELLS
        and layer(i.importer) not in SHELLS
        and i.importer not in ENTRY_POINTS
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_module_level() -> None:
    assert cycles(graph(top_level_only=True)) == []


def test_no_import_cycle_hidden_inside_functions() -> None:
    assert cycles(graph(top_level_only=False)) == []


def test_no_module_imports_another_modules_private_names() -> None:
    # A helper two modules need gets a public name in the module that owns it.
    wrong = [
        f"{i.importer}:{i.line} imports {name} from {i.target}"
        for i in IMPORTS
        if i.target.startswith("speakerdb")
        for name in i.names
        if name.startswith("_") and not name.endswith("__")
    ]
    assert not wrong, "\n".join(wrong)

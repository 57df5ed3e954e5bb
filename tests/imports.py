"""The package's import graph, read from the source with ``ast`` (nothing is imported or run)."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mstagger"


def module_file(module: str) -> Path | None:
    """The source file of ``mstagger.a.b``: ``a/b.py`` or ``a/b/__init__.py`` (None outside the package)."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in (SRC / PACKAGE).rglob("*.py"))


@cache
def imports_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(modules of the package that ``module`` imports anywhere in its code, top-level names of others)."""
    path = module_file(module)
    assert path is not None, module
    tree = ast.parse(path.read_text(), str(path))
    ours: set[str] = set()
    theirs: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parent = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            # ``from mstagger.data import audio`` imports the submodule; ``from x import name`` the module
            names = [base] + [f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == PACKAGE:
                # importing a.b.c runs a, a.b and a.b.c
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    if module_file(".".join(parts[:i])):
                        ours.add(".".join(parts[:i]))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                theirs.add(top)
    ours.discard(module)
    return frozenset(ours), frozenset(theirs)


def closure(module: str, skip: frozenset[str] = frozenset()) -> set[str]:
    """``module`` and every package module it imports, directly or not (not following ``skip``)."""
    seen, todo = {module}, [module]
    while todo:
        node = todo.pop()
        if node in skip:
            continue
        for dep in imports_of(node)[0]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def is_package_init(module: str) -> bool:
    path = module_file(module)
    return path is not None and path.name == "__init__.py"

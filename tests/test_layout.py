"""The facts of the layout, checked rather than kept by hand: the layers, no import circle, each DVC
stage's code deps, and the packages pyproject.toml declares (all read from the source with ``ast``)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import yaml

from imports import PACKAGE, SRC, all_modules, closure, imports_of, is_package_init, module_file

ROOT = SRC.parent
STAGES = ("check_params", "download", "extract", "prepare", "train", "evaluate")

# The architecture, top to bottom (README "Architecture"): a module imports its own part of the package
# and the layers below its own, never a layer above or a sibling part of its own layer.
LAYERS: list[set[str]] = [
    {"__main__"},  # python -m mstagger
    {""},  # mstagger/__init__.py: the API's lazy face
    {*STAGES, "commands", "api"},
    {"training"},  # validation goes through inference's one path and evaluation's scores
    {"evaluation", "inference"},
    {"demo"},
    {"data", "model"},
    {"params"},
    {"protocols"},  # the published MTAT protocols, which params validates against
    {"core"},
]
# Run as commands, not imported: the pipeline's own tool.
COMMANDS = {"dvc"}
# Imported by the tests and benchmarks only, or run by CI: the dev extra.
DEV_TOOLS = {"pytest", "ruff"}


def part(module: str) -> str:
    """The part of the package a module belongs to: ``data`` for mstagger.data.audio, ``train``..."""
    return module.split(".")[1] if "." in module else ""


def layer(module: str) -> int:
    return next(i for i, parts in enumerate(LAYERS) if part(module) in parts)


def test_every_module_has_a_layer() -> None:
    missing = [m for m in all_modules() if not any(part(m) in parts for parts in LAYERS)]
    assert not missing, f"add these to LAYERS (and the README's architecture section): {missing}"


def test_layers_point_down() -> None:
    wrong = []
    for module in all_modules():
        for dep in imports_of(module)[0]:
            if dep == PACKAGE or part(dep) == part(module):
                continue
            if layer(dep) <= layer(module):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(wrong)


def test_no_import_circle() -> None:
    """Between modules: a submodule's import of its own package's ``__init__`` is Python running the
    parent first, not a dependency on its code, so package inits are left out of the graph."""
    graph = {m: {d for d in imports_of(m)[0] if not is_package_init(d)} for m in all_modules()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    circles = [m for m in graph if any(reaches(d, m) for d in graph[m])]
    assert not circles, f"modules in an import circle: {circles}"


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def test_subpackages_hold_no_code_in_init() -> None:
    """Their ``__init__`` files are empty (a docstring at most), so importing one module of a part
    runs no other code; the demo package is the one exception and is listed in deps whole."""
    for module in all_modules():
        if is_package_init(module) and module not in (PACKAGE, f"{PACKAGE}.demo"):
            tree = ast.parse(module_file(module).read_text())
            code = [n for n in tree.body if not _is_docstring(n)]
            assert not code, f"{module_file(module)} holds code: move it into a module of its own"


def test_package_face_imports_nothing_at_import_time() -> None:
    """``import mstagger`` stays light: the API's names are loaded on first use (module __getattr__)."""
    tree = ast.parse(module_file(PACKAGE).read_text())
    eager = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom) and n.module != "__future__"]
    assert all(isinstance(n, ast.ImportFrom) and n.module in ("typing",) for n in eager), ast.dump(eager[0])


def _stage_code(stage: str) -> set[str]:
    """The source files ``python -m mstagger.<stage>`` imports, directly or not, with the data files
    beside them that they read (``<module>.json``); empty package inits,
    and the package's lazy face, run no code and are left out: nothing it names loads until used)."""
    files = set()
    for module in closure(f"{PACKAGE}.{stage}", skip=frozenset({PACKAGE})):
        if module == PACKAGE or (is_package_init(module) and module != f"{PACKAGE}.demo"):
            continue
        path = module_file(module)
        files.add(path.relative_to(ROOT).as_posix())
        data = path.with_suffix(".json")  # a module's data file beside it (protocols.json)
        if data.is_file():
            files.add(data.relative_to(ROOT).as_posix())
    return files


def _listed_code(deps: list[str]) -> set[str]:
    """The source files a stage's deps name: a file, or every file below a folder."""
    files = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith("src/"):
            found = [path] if path.is_file() else sorted(path.rglob("*.py")) + sorted(path.rglob("*.json"))
            assert found, f"dvc.yaml names {dep}, which does not exist"
            files |= {p.relative_to(ROOT).as_posix() for p in found}
    return files


def test_stage_deps_are_the_code_each_stage_imports() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGES)
    for stage, spec in stages.items():
        assert spec["cmd"] == f"python -m {PACKAGE}.{stage}"
        listed, imported = _listed_code(spec["deps"]), _stage_code(stage)
        assert listed == imported, (
            f"dvc.yaml stage {stage}: add {sorted(imported - listed)}, remove {sorted(listed - imported)}"
        )


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()


def _distributions(modules: set[str]) -> set[str]:
    """Distribution names of top-level import names (``sklearn`` -> ``scikit-learn``)."""
    known = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in known)
    assert not missing, f"imported but not installed: {missing}"
    return {known[m][0].lower() for m in modules}


def _third_party(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    local = {PACKAGE, "helpers", "imports", "common", "__future__"} | {p.stem for p in folder.glob("*.py")}
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def test_pyproject_declares_exactly_what_the_code_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(s) for s in project["dependencies"]}
    dev = {_requirement_name(s) for s in project["optional-dependencies"]["dev"]}
    runtime = _distributions(_third_party(SRC / PACKAGE)) | COMMANDS
    assert declared == runtime, f"add {sorted(runtime - declared)}, drop {sorted(declared - runtime)}"
    used = _third_party(ROOT / "tests") | _third_party(ROOT / "bench")
    tooling = (_distributions(used) - runtime) | DEV_TOOLS
    assert dev == tooling, f"dev extra: add {sorted(tooling - dev)}, drop {sorted(dev - tooling)}"

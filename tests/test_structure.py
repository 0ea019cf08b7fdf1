"""The shape of the package, as DESIGN.md states it: imports run one way, heavy libraries stay where they
belong, the command line stays thin, and errors keep their causes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PACKAGE = Path(__file__).parent.parent / "nas"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))

# What each module may import from nas. Leaves first; nothing imports cli.
ALLOWED = {
    "errors": set(),
    "names": {"errors"},  # the names users may write, for the CLI's choices: imports nothing heavy
    "files": {"errors"},  # every write nas makes
    "spec": set(),  # the plain data of one network
    "space": {"errors", "spec"},  # the Space model and sampling: plain data
    "spacefile": {"files", "names", "space", "spec"},  # space files (YAML) -> a validated Space
    "system": set(),  # the machine: cores, threads, memory (no torch)
    "formats": {"errors", "files", "names", "system"},  # file readers -> numpy arrays: `nas predict` reads with no torch
    "data": {"files", "formats", "names"},
    "model": {"errors", "names", "spec", "system"},  # a spec's net: built, sized, and whether it fits (system: memory)
    "train": {"data", "errors", "model", "names", "spec", "system"},  # the loop; a spec's seeded net trained on prepared data
    "latency": {"spec"},  # torch and ONNX Runtime; a spec names the architecture it times
    # the optuna layer: a trial's record, fronts, storage, studies, the objective (DESIGN.md's table)
    "record": {"names"},  # the only module that spells a trial's attr keys
    "pareto": {"record"},
    "storage": {"errors", "files", "record"},
    "study": {"errors", "names", "pareto", "record", "space", "spacefile", "storage"},
    "objective": {"data", "errors", "latency", "model", "pareto", "record", "space", "spec", "storage", "study", "train"},
    "claims": {"record"},  # the study-wide trial count, in the storage beside Optuna's tables
    "autospace": {"files"},  # the built-in space of a dataset, as plain data (files: a name as text)
    "signals": {"errors", "storage"},  # signals -> Interrupted (storage: whether a transaction is open)
    "workers": {"errors", "record", "signals", "storage", "system", "train"},  # worker processes, whatever work they run
    "search": {"autospace", "claims", "data", "errors", "names", "objective", "record", "signals", "space", "spacefile",
               "storage", "study", "system", "train", "workers"},
    "preview": {"autospace", "data", "files", "model", "names", "space", "spacefile", "train"},
    "autorun": {"data", "errors", "files", "model", "names", "record", "report", "retrain", "search", "signals", "space",
                "spacefile", "spec", "study", "train"},  # search, then retrain and export
    "report": {"files", "names", "pareto", "record", "storage", "study"},
    "dashboard": {"storage", "study"},  # optuna-dashboard on a storage
    "export": {"errors", "files", "formats", "latency", "model", "signals", "space", "spacefile", "spec", "system"},  # no Optuna
    "retrain": {"data", "export", "files", "model", "record", "signals", "space", "spacefile", "spec", "storage", "study",
                "train"},
    "views": {"autorun", "errors", "names", "search"},  # results as text: the library inside its functions only
    "progress": {"errors", "names", "retrain", "search", "train", "views", "workers"},  # events, routed by type
    "cli": set(MODULES) - {"cli", "__init__"},  # inside its commands only (checked below)
    "__init__": {"export"},
}
EDGE = ("views", "progress", "cli")  # what the user sees: imported by nothing else, the library only lazily
HEAVY = {  # third-party libraries and the only modules that may import them
    "optuna": {"record", "pareto", "storage", "study", "objective", "report", "dashboard", "retrain"},
    "sqlalchemy": {"storage", "claims"},
    "optuna_dashboard": {"dashboard"},
    "plotly": {"report"},
    "torch": {"data", "model", "train", "latency", "objective", "search", "workers", "preview", "export", "retrain",
              "autorun"},
    "onnxruntime": {"export", "latency"},
    "rich": {"views", "progress"},
    "typer": {"cli"},
}


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of `module`, leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                found.extend((f"{base}.{a.name}" if base == "nas" else base, top) for a in child.names)
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(tree, True)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_imports_run_the_way_design_md_says(module):
    for name, top in _imports(module):
        root = name.split(".")[0]
        if root == "nas":
            target = name.split(".")[1]
            assert target in ALLOWED[module], f"nas.{module} imports nas.{target}"
            assert module not in EDGE or not top or target in ("errors", "names", "views"), \
                f"nas.{module} imports nas.{target} at load"
            assert target not in EDGE or module in EDGE, f"nas.{module} imports nas.{target}: nothing below the edge may"
        elif root in HEAVY:
            assert module in HEAVY[root], f"nas.{module} imports {root}"


def test_the_allowed_imports_have_no_cycle():
    seen: dict[str, int] = {}

    def depth(m: str, path: tuple[str, ...] = ()) -> int:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m not in seen:
            seen[m] = 1 + max((depth(d, (*path, m)) for d in ALLOWED[m] if m != "cli"), default=0)
        return seen[m]

    for m in ALLOWED:
        depth(m)


def test_importing_the_command_line_loads_neither_torch_nor_optuna():
    code = "import sys, nas.cli; print(sorted(m for m in ('torch', 'optuna', 'plotly') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LIBRARIES = ("torch", "optuna", "sqlalchemy", "plotly")


def _loaded_by(code: str) -> list[str]:
    """Which of LIBRARIES a fresh interpreter has loaded after running `code` (which must print nothing)."""
    check = f"import sys; {code}; print(sorted(m for m in {LIBRARIES} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def _cli(*args: str) -> str:
    """Code that runs `nas ARGS` in-process through typer's CliRunner and fails unless it succeeds."""
    return ("from typer.testing import CliRunner; from nas.cli import app; "
            f"r = CliRunner().invoke(app, {list(map(str, args))!r}); assert r.exit_code == 0, r.output")


def test_predict_loads_neither_torch_nor_optuna_nor_sqlalchemy(finished_study, tmp_path):
    """`nas predict` classifies through ONNX Runtime with numpy and PIL, so it starts in well under torch's import."""
    from PIL import Image

    _, export = finished_study
    Image.new("L", (28, 28), 90).save(tmp_path / "a.png")
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 28, 28), np.uint8))
    assert _loaded_by(_cli("predict", export, tmp_path / "a.png", tmp_path / "b.npz", "--json")) == []


@pytest.mark.slow
def test_best_that_only_lists_loads_optuna_but_not_torch(finished_study):
    storage, _ = finished_study
    assert _loaded_by(_cli("best", "--storage", storage)) == ["optuna", "sqlalchemy"]
    assert _loaded_by(_cli("best", "--storage", storage, "--json", "--top", "2", "--trial", "0")) == ["optuna", "sqlalchemy"]


def test_help_loads_neither_torch_nor_optuna_nor_sqlalchemy():
    assert _loaded_by(_cli("--help")) == []
    assert _loaded_by(_cli("search", "--help")) == []


@pytest.mark.slow
def test_load_model_loads_torch_but_neither_optuna_nor_sqlalchemy(finished_study):
    _, export = finished_study
    assert _loaded_by(f"import nas; nas.load_model({str(export)!r})") == ["torch"]


def test_every_command_is_short():
    """A command parses, calls one library function and hands the result to a view: no function of cli.py over 40
    lines."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1})" for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40]
    assert not long


def test_no_raise_inside_except_drops_its_cause():
    """Inside an `except`, `raise X(...)` says `from e` (or `from None`), so the cause stays in the traceback."""
    bare = []
    for module in MODULES:
        for handler in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            if isinstance(handler, ast.ExceptHandler):
                bare += [f"nas/{module}.py:{n.lineno}" for n in ast.walk(handler)
                         if isinstance(n, ast.Raise) and n.exc is not None and n.cause is None]
    assert not bare


def test_public_functions_say_what_they_do():
    missing = []
    for module in MODULES:
        for node in ast.parse((PACKAGE / f"{module}.py").read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") and module != "cli":
                if not ast.get_docstring(node):
                    missing.append(f"nas.{module}.{node.name}")
    assert not missing


def test_docs_architecture_md_holds_the_same_import_table():
    """The contributors' table (docs/architecture.md) is this file's ALLOWED, module by module."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| [^|]* \| `(\w+)` \| [^|]* \| ([^|]*) \|$", text, flags=re.M)
    documented = {m: set(re.findall(r"`(\w+)`", imports)) for m, imports in rows if m != "cli"}
    assert documented == {m: ALLOWED[m] for m in MODULES if m != "cli"}
    assert {m for m, _ in rows} == set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_is_one_job_of_a_readable_size(module):
    """A docstring naming its job, at most 500 lines, no function over 50 (issue 23)."""
    source = (PACKAGE / f"{module}.py").read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"nas/{module}.py has no docstring naming its job"
    assert len(source.splitlines()) <= 500, f"nas/{module}.py has {len(source.splitlines())} lines"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 50]
    assert not long, f"nas/{module}.py: functions over 50 lines: {long}"

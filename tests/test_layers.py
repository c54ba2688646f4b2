"""The package's layering, read from its import statements (``ast``, nothing imported):

- ``core/`` (the library) imports nothing of tokendrift outside ``core/``;
- ``jobs/`` import the library and each other, never the grid or the reporting layer;
- ``report/`` never imports a job module (nor the command line);
- ``grid/`` (the sheet, the layout, the rule adapter) never imports a job module: it reads the
  library and the figure registry of ``report/figures.py``;
- no import circle anywhere in the package.

Every import counts, the ones inside functions too (they run); those under ``if TYPE_CHECKING:``
do not (annotations only)."""

import ast
import shutil
import textwrap
from pathlib import Path

import pytest

from tokendrift.core.utils import code_digest

PACKAGE = Path(__file__).resolve().parents[1] / "tokendrift"

# layer (first folder under the package) -> the layers it must not import; "" is a top-level module
FORBIDDEN = {
    "core": lambda target: target != "core",
    "jobs": lambda target: target not in ("core", "jobs"),
    "report": lambda target: target in ("jobs", ""),
    "grid": lambda target: target in ("jobs", ""),
}


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(root: Path) -> dict[str, set[str]]:
    """Each module of the package under ``root`` -> the package's modules it imports."""
    modules = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()

        def visit(node):
            if isinstance(node, ast.If) and _type_checking(node):
                return [visit(n) for n in node.orelse]
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                # `from pkg import mod` imports the module pkg.mod where there is one
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(path.read_text(), str(path)))
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def layer(root: Path, module: str) -> str:
    parts = module.split(".")[1:]
    return parts[0] if len(parts) > 1 else ""


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import circle of ``graph`` (as the list of its modules, the first repeated), or None."""
    state, stack = {}, []

    def dfs(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := dfs(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := dfs(m)):
            return found
    return None


def violations(root: Path) -> list[str]:
    graph = imports(root)
    out = [
        f"{m} imports {n} ({layer(root, m)}/ must not import {layer(root, n) or 'top-level modules'})"
        for m, targets in sorted(graph.items())
        for n in sorted(targets)
        if layer(root, m) in FORBIDDEN and FORBIDDEN[layer(root, m)](layer(root, n))
    ]
    if circle := cycle(graph):
        out.append("import circle: " + " -> ".join(circle))
    return out


def test_the_package_keeps_its_layers():
    graph = imports(PACKAGE)
    assert len(graph) > 30 and graph["tokendrift.jobs.train"]  # the parser found the package's imports
    assert violations(PACKAGE) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "tokendrift"
    for rel, text in {
        "__init__.py": "",
        "core/__init__.py": "",
        "jobs/__init__.py": "",
        "report/__init__.py": "",
        "grid/__init__.py": "",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for rel, text in files.items():
        (root / rel).write_text(textwrap.dedent(text))
    return root


CLEAN = {
    "core/utils.py": "import os\n",
    "core/hub.py": "from .utils import os\n",
    "jobs/train.py": "from ..core import hub\nfrom . import sample\n",
    "jobs/sample.py": "from ..core.utils import os\n",
    "report/tables.py": "from typing import TYPE_CHECKING\nfrom ..grid.layout import Layout\nif TYPE_CHECKING:\n    from ..jobs import train\n",
    "grid/layout.py": "from ..core import utils\n",
    "cli.py": "def main():\n    from .jobs import train\n    from .report import tables\n",
}


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"core/hub.py": "from ..jobs.sample import os\n"}, "tokendrift.core.hub imports tokendrift.jobs.sample"),
        ({"core/hub.py": "def f():\n    from tokendrift import grid\n"}, "tokendrift.core.hub imports tokendrift.grid"),
        (
            {"jobs/sample.py": "from ..report.tables import x\n"},
            "tokendrift.jobs.sample imports tokendrift.report.tables",
        ),
        ({"jobs/sample.py": "import tokendrift.grid\n"}, "tokendrift.jobs.sample imports tokendrift.grid"),
        ({"report/tables.py": "from ..jobs import train\n"}, "tokendrift.report.tables imports tokendrift.jobs.train"),
        ({"grid/layout.py": "from ..report import tables\n"}, {"tokendrift.grid.layout", "tokendrift.report.tables"}),
        ({"grid/layout.py": "from ..jobs.sample import os\n"}, "tokendrift.grid.layout imports tokendrift.jobs.sample"),
        ({"report/tables.py": "from .. import cli\n"}, "tokendrift.report.tables imports tokendrift.cli"),
        ({"core/utils.py": "from . import hub\n"}, {"tokendrift.core.hub", "tokendrift.core.utils"}),
    ],
)
def test_the_checker_finds_a_violation(tmp_path, edit, expected):
    assert violations(_package(tmp_path / "clean", CLEAN)) == []  # the synthetic package is clean
    found = violations(_package(tmp_path / "edited", CLEAN | edit))
    if isinstance(expected, set):  # the modules of a circle, from wherever the search entered it
        circles = [set(v.removeprefix("import circle: ").split(" -> ")) for v in found if v.startswith("import circle")]
        assert circles == [expected], found
    else:
        assert any(v.startswith(expected) for v in found), found


@pytest.mark.parametrize(
    "edited, stale",
    [
        ("core/model.py", True),
        ("jobs/sample.py", True),
        ("schemas/train.schema.yaml", True),
        ("report/tables.py", False),
        ("grid/rules.py", False),
        ("grid/layout.py", False),
        ("warm.py", False),
        ("cli.py", False),
        ("grid/paper_grid.yaml", False),
    ],
)
def test_only_the_library_jobs_and_schemas_make_results_stale(tmp_path, edited, stale):
    root = tmp_path / "tokendrift"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    assert code_digest(False, root) == code_digest(False)  # the copy digests as the package does
    before, whole = code_digest(False, root), code_digest(True, root)
    assert (root / edited).is_file()  # an edit of a file the package has
    with open(root / edited, "a") as f:
        f.write("\n# an edit\n")
    assert (code_digest(False, root) != before) is stale
    assert code_digest(True, root) != whole  # the reporting digest covers every file

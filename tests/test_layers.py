"""The package layers (pyproject's import-linter contracts) hold, and the check catches a violation."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_contracts_are_kept():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, bad_import, contract",
    [
        ("datasets/catalog.py", "import cacheclip.fit.stage", "Stages import only the stages below them"),
        ("fit/stage.py", "import cacheclip.features.extract", "never runs the extraction"),
        ("results/report.py", "import rich", "never imports the CLI's toolkits"),
        ("features/store.py", "import cacheclip.features.export", "No import circles"),
    ],
)
def test_a_violating_import_breaks_a_contract(tmp_path, module, bad_import, contract):
    """Mutation check: the same contracts on a copy of the package with one bad import added."""
    shutil.copytree(REPO / "cacheclip", tmp_path / "cacheclip", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "cacheclip" / module
    target.write_text(target.read_text() + f"\n{bad_import}  # injected by the test\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert contract in done.stdout and "BROKEN" in done.stdout


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (deferred imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_library_never_imports_the_cli():
    """cli/ is installed as cacheclip.cli, outside import-linter's view: checked here
    (``__main__``, the `python -m cacheclip` entry point, is the CLI's own)."""
    for path in (REPO / "cacheclip").rglob("*.py"):
        if path.name == "__main__.py":
            continue
        bad = {n for n in _imports(path) if n == "cacheclip.cli" or n.startswith("cacheclip.cli.")}
        assert not bad, f"{path} imports the CLI: {bad}"


def test_cli_modules_have_no_circles():
    modules = {p.stem: p for p in (REPO / "cli").glob("*.py")}
    edges = {
        name: {n.rsplit(".", 1)[-1] for n in _imports(path) if n.startswith("cacheclip.cli.")} & set(modules)
        for name, path in modules.items()
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges[start])

    circles = [name for name in modules if reaches(name, name, {name})]
    assert not circles, f"import circles through {circles}"

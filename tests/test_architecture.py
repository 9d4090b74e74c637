"""The house's layers, checked: `lint-imports` keeps the contracts of pyproject.toml (layers from
the CLI down, commands and task folders independent, only tracking/ imports mlflow) on the real
package, and breaks them on a copy of it given one bad import each, so a future cycle fails CI.
Plus what the contracts cannot say: which modules may sit at the package root, and that a long
module says why it is long."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "deepmine"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: the package root holds the entry points and a few shared basics, nothing else (README,
#: Architecture): each of these is imported by several layers or is the door itself
ROOT_MODULES = {
    "__init__.py",
    "__main__.py",
    "cli.py",  # the dispatcher
    "config.py",  # the Hydra tree as a library: resolvers, compose_train, checked_instantiate
    "errors.py",  # DeepmineError: problem + fix in one line
    "figures.py",  # the PNG writer and the figures no one task owns
    "project.py",  # where the project lives
}
#: longer than this, a module's docstring must say why it is one module
LONG_MODULE_LINES = 350


def lint_imports(project: Path, src: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail("lint-imports is missing: install the dev tools (`pip install -e '.[dev]'`)")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_every_import_contract():
    proc = lint_imports(ROOT, ROOT / "src")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
    # the four contracts ran, not an empty configuration
    assert proc.stdout.count(" KEPT") == 4, proc.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        # a cycle through the layers: tracking reaching up into the run layer
        ("tracking/store.py", "import deepmine.run.build", "Layers"),
        # the cycle of old: eval taking its checks from the train command
        ("commands/evaluate.py", "import deepmine.commands.train", "Commands are independent"),
        # one task folder using another's helpers
        (
            "tasks/clustering/task.py",
            "import deepmine.tasks.classification.attacks",
            "Task folders",
        ),
        # MLflow outside tracking/
        ("nets/mlp.py", "import mlflow", "Only tracking/"),
    ],
)
def test_a_bad_import_breaks_its_contract(tmp_path, module, bad_import, contract):
    """A copy of the package with one import added: lint-imports exits non-zero and names the
    broken contract (so the contracts above can fail)."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "deepmine", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / "deepmine" / module
    path.write_text(path.read_text() + f"\n{bad_import}  # noqa\n")
    proc = lint_imports(tmp_path, tmp_path / "src")
    assert proc.returncode != 0, proc.stdout[-3000:]
    broken = proc.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, proc.stdout[-3000:]
    assert "1 broken" in proc.stdout, proc.stdout[-3000:]


def test_only_entry_points_and_shared_basics_sit_at_the_package_root():
    found = {path.name for path in PACKAGE.glob("*.py")}
    assert found == ROOT_MODULES, f"new root modules {found - ROOT_MODULES}: give them a room"


def test_a_long_module_says_why_it_is_long():
    long_ones = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > LONG_MODULE_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            long_ones[str(path.relative_to(PACKAGE))] = "one module" in doc
    assert all(long_ones.values()), f"over {LONG_MODULE_LINES} lines without a reason: {long_ones}"

"""The import rules of docs/ARCHITECTURE.md, checked by import-linter (contracts in
pyproject.toml): they hold for this tree, and a tree that breaks one of them fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PACKAGES = ("model", "core", "service", "worker", "debm")
LINT = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "8 kept" in result.stdout, result.stdout


def copy_tree(target: Path) -> None:
    shutil.copy(REPO / "pyproject.toml", target)
    for package in PACKAGES:
        shutil.copytree(REPO / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__"))


def test_a_service_module_importing_the_worker_breaks_the_layers(tmp_path):
    copy_tree(tmp_path)
    with open(tmp_path / "service" / "dispatch.py", "a") as module:
        module.write("\nimport worker.tasks  # a deliberate violation\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout[-4000:]
    assert "service.dispatch -> worker.tasks" in result.stdout, result.stdout


def test_core_importing_torch_code_breaks_its_contract(tmp_path):
    copy_tree(tmp_path)
    with open(tmp_path / "core" / "registry.py", "a") as module:
        module.write("\nfrom model.checkpoints import load_checkpoint  # a deliberate violation\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout[-4000:]
    assert "core is not allowed to import model" in result.stdout, result.stdout


def test_a_circle_inside_worker_breaks_its_layers(tmp_path):
    copy_tree(tmp_path)
    with open(tmp_path / "worker" / "runtime.py", "a") as module:
        module.write("\nfrom worker.lifecycle import execute  # a deliberate circle\n")
    result = lint(tmp_path)
    assert result.returncode == 1, result.stdout[-4000:]
    assert "worker.runtime -> worker.lifecycle" in result.stdout, result.stdout

"""The import rules of docs/ARCHITECTURE.md, checked by import-linter (contracts in
pyproject.toml): they hold for this tree, and a tree that breaks one of them fails."""

from __future__ import annotations

import json
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


def _cycles(graph, modules) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(set(graph.find_modules_directly_imported_by(m)) & modules)
             for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                target = edges[node][child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            for target in edges[node]:
                if target in on_stack:
                    low[node] = min(low[node], low[target])
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


def test_no_module_imports_itself_through_others():
    """No import circle anywhere in the five packages (the contracts hold three packages'
    insides; this holds every module, lazy and TYPE_CHECKING imports included)."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    assert _cycles(graph, set(graph.modules)) == []


def test_the_cycle_finder_finds_a_circle(tmp_path):
    copy_tree(tmp_path)
    with open(tmp_path / "worker" / "runtime.py", "a") as module:
        module.write("\nfrom worker.lifecycle import execute  # a deliberate circle\n")
    code = ("import grimp, json, sys; from tests.test_architecture import _cycles; "
            "g = grimp.build_graph(*sys.argv[1:], include_external_packages=False, "
            "cache_dir=None); print(json.dumps(_cycles(g, set(g.modules))))")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    result = subprocess.run([sys.executable, "-c", code, *PACKAGES], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert any("worker.lifecycle" in c and "worker.runtime" in c
               for c in json.loads(result.stdout)), result.stdout

"""Short functions and files (issue 21 item 3): no module over 500 lines and no function over
60 lines outside tests, checked on the syntax tree of every module of the five packages and
benchmarks/."""

from __future__ import annotations

import ast

from tests.support import REPO

PACKAGES = ("model", "core", "service", "worker", "debm", "benchmarks")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# Being split in branch `paper` (issue 21 item 3, model/ half): the lead removes these
# entries when that branch merges.  Nothing else may be listed here.
BEING_SPLIT_IN_BRANCH_PAPER = {"model/training.py", "model/pipeline.py", "model/evaluation.py"}
# Functions other branches are rewriting now (issue 23's error paths: the scoring job's
# clean-up and `finish` checking the lease holder); split them after those merge, then drop
# these entries.
BEING_REWRITTEN_ELSEWHERE = {("worker/handlers.py", "run_score"),
                             ("worker/lifecycle.py", "_run_leased")}


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path


def _too_long() -> list[str]:
    found = []
    for name, path in _modules():
        if name in BEING_SPLIT_IN_BRANCH_PAPER:
            continue
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and (name, node.name) \
                        not in BEING_REWRITTEN_ELSEWHERE:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_over_500_lines_and_no_function_over_60():
    assert _too_long() == []


def test_the_exemptions_are_real_files():
    assert all((REPO / name).is_file() for name in BEING_SPLIT_IN_BRANCH_PAPER)

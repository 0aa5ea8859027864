"""Short functions and files (issue 21 item 3): no module over 500 lines and no function over
60 lines outside tests, checked on the syntax tree of every module of the five packages and
benchmarks/."""

from __future__ import annotations

import ast

from tests.support import REPO

PACKAGES = ("model", "core", "service", "worker", "debm", "benchmarks")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _modules():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path


def _too_long() -> list[str]:
    found = []
    for name, path in _modules():
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_over_500_lines_and_no_function_over_60():
    assert _too_long() == []


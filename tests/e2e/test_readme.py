"""Every README block runs on its own (issue 25 item 1): each ```bash and ```python block of
README.md runs in a new `bash` process (python blocks through `.venv/bin/python`), in a
shuffled order, from a working directory laid out like a fresh clone after `./run.sh serve`
(examples/, checkpoints/, .venv, and var/debm of a live `debm serve` with its generated key).
No shell state is shared: a block that needs a variable, a function or `debm` on PATH must set
it up itself.  `set -euo pipefail` and curl's --fail-with-body make any error answer fail.

Blocks that are deliberately not run carry `<!-- not run: REASON -->` right above them in the
README; ``NOT_RUN`` lists them here, so a new marker is a visible change to this test."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.images import decode_png
from tests.support.processes import dump_logs

from .conftest import start_serve

pytestmark = pytest.mark.system

DEFAULT_API = "http://127.0.0.1:8000"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```",
                   flags=re.S | re.M)
MARKER = re.compile(r"<!-- not run: (?P<reason>[^>]*?) -->\s*$")
# (the block's first line, the reason's first words): every block the test does not run.
NOT_RUN = {
    ("./run.sh serve", "the two set-up commands"),
    ("source .venv/bin/activate", "hours of training"),
    ("# Evaluation (docs/RESULTS.md)", "over 3 minutes"),
    ('export DEBM_ADMIN_KEYS="me', "docker"),
    ("# docker-compose.gpus.yml", "a compose file"),
    ("# A lent GPU", "needs a lent GPU"),
    ("KEY=$(cat var/debm/api-key)", "needs DEBM_WEBHOOK_SECRET"),
    ("import os", "runs inside your webhook receiver"),
}


def readme_blocks() -> list[dict]:
    text = (REPO / "README.md").read_text()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(before)
        body = "\n".join(line[len(match["indent"]):] for line in match["body"].splitlines())
        blocks.append({"lang": match["lang"], "body": body + "\n",
                       "line": text[:match.start()].count("\n") + 1,
                       "first": body.strip().splitlines()[0],
                       "not_run": marker["reason"] if marker else None})
    return blocks


def test_every_block_is_run_or_marked_not_run():
    blocks = readme_blocks()
    marked = [(b["first"], b["not_run"]) for b in blocks if b["not_run"]]
    matched = sorted((start, words) for first, reason in marked for start, words in NOT_RUN
                     if first.startswith(start) and reason.startswith(words))
    assert matched == sorted(NOT_RUN) and len(marked) == len(NOT_RUN), marked
    for block in blocks:
        if not block["not_run"]:
            assert block["lang"] in ("bash", "python"), (
                f"README.md line {block['line']}: a ```{block['lang']} block is neither run "
                "nor marked <!-- not run: ... -->")
    runnable = [b for b in blocks if not b["not_run"]]
    assert len(runnable) >= 10
    for block in runnable:  # nothing a reader cannot have, nothing outside var/readme/
        assert "my_images" not in block["body"] and "runs/" not in block["body"], block["line"]
        assert not re.search(r"\s-o (?!var/readme/|/dev/null)", block["body"]), block["line"]
        assert "field " not in block["body"], block["line"]
        if block["lang"] == "bash" and re.search(r"^(?!.*\.venv/bin/debm)(.*\s)?debm ",
                                                 block["body"], flags=re.M):
            assert ("source .venv/bin/activate" in block["body"]
                    or ".venv/bin/debm" in block["body"]), block["line"]


def _script(block: dict, base: str) -> str:
    body = block["body"].replace(DEFAULT_API, base)
    if block["lang"] == "python":
        body = f".venv/bin/python - <<'PYTHON_BLOCK'\n{body}PYTHON_BLOCK\n"
    return "set -euo pipefail\n" + body


def test_every_readme_block_runs_in_its_own_shell(tmp_path):
    work = tmp_path / "clone"  # the README's working directory
    (work / "var").mkdir(parents=True)
    for shipped in ("examples", "checkpoints"):
        (work / shipped).symlink_to(REPO / shipped)
    (work / ".venv").symlink_to(Path(sys.prefix))  # this interpreter's environment
    server = start_serve(work / "var" / "debm", tmp_path, keys=False,
                         seed_checkpoint=REPO / "checkpoints" / "demo")
    # A fresh shell: no venv on PATH (a block must activate it), the checkout's code first.
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {**{k: v for k, v in os.environ.items()
              if not k.startswith("DEBM_") and k != "VIRTUAL_ENV"},
           "PATH": path, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "DEBM_URL": server.base}
    seed = int(os.environ.get("README_ORDER_SEED", time.time_ns() % 10_000))
    blocks = [b for b in readme_blocks() if not b["not_run"]]
    random.Random(seed).shuffle(blocks)
    timings, failures = [], []
    try:
        for block in blocks:
            started = time.monotonic()
            run = subprocess.run(["bash", "-c", _script(block, server.base)], cwd=work,
                                 capture_output=True, text=True, timeout=600, env=env)
            timings.append((block["line"], round(time.monotonic() - started, 1)))
            if run.returncode != 0:
                failures.append(f"README.md line {block['line']} ({block['first']!r}) exited "
                                f"{run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
        print(f"order seed {seed} (README_ORDER_SEED); seconds per block by line: {timings}")
        assert not failures, ("\n\n".join(failures) + f"\n(order seed {seed})\n"
                              + dump_logs(server.proc))
    finally:
        server.proc.kill()
    scratch = work / "var" / "readme"
    assert decode_png((scratch / "grid.png").read_bytes()).size[0] > 28
    for made in ("generated.json", "grid.json", "samples.png", "annealed.png",
                 "client-grid.png", "remote-grid.png", "served/mine/checkpoint.json",
                 "remote-train/history.json", "tiny/checkpoint.json"):
        assert (scratch / made).exists(), made
    assert list((scratch / "previews").glob("*.png"))
    assert sorted(p.name for p in work.iterdir()) == [".venv", "checkpoints", "examples",
                                                      "var"]
    assert sorted(p.name for p in (work / "var").iterdir()) == ["debm", "readme"]


def test_examples_are_what_make_examples_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_examples",
                                                  REPO / "examples" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(tmp_path)
    assert [p.name for p in written] == ["digit-7.png", "digit-2.png", "photo.jpg",
                                         "digits.zip"]
    for path in written:
        assert path.read_bytes() == (REPO / "examples" / path.name).read_bytes(), path.name

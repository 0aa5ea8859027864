"""The README's API blocks, extracted from README.md and run top to bottom against a live
`debm serve` (the demo checkpoint, a generated admin key in var/debm/api-key, the files of
examples/), exactly as a user would after `./run.sh serve`: the curl block, the Python client
block and the `debm remote` block, in one shell.  Every curl uses --fail-with-body and the
script runs under `set -euo pipefail`, so any error answer fails the test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.images import decode_png
from tests.support.processes import dump_logs

from .conftest import start_serve

pytestmark = pytest.mark.system

DEFAULT_API = "API=http://127.0.0.1:8000"


def readme_block(heading: str, language: str) -> str:
    """The first ```language block under the README heading that starts with ``heading``."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(f"\n## {heading}"):]
    match = re.search(rf"```{language}\n(.*?)```", section, flags=re.S)
    assert match, f"README.md: no ```{language} block under '## {heading}'"
    return match.group(1)


def readme_api_block() -> str:
    return readme_block("The API\n", "bash")


def test_every_readme_api_command_runs_as_written(tmp_path):
    block = readme_api_block()
    assert block.count(DEFAULT_API) == 1 and " -s " not in block
    work = tmp_path / "clone"  # the README's working directory: var/debm and examples/
    (work / "var").mkdir(parents=True)
    (work / "examples").symlink_to(REPO / "examples")
    server = start_serve(work / "var" / "debm", tmp_path, keys=False,
                         seed_checkpoint=REPO / "checkpoints" / "demo")
    try:
        client = readme_block("Python client", "python").replace(
            '"http://127.0.0.1:8000"', repr(server.base))
        assert client.count(repr(server.base)) == 1
        remote = readme_block("Python client", "bash")
        # the clone's .venv: this interpreter's environment, with this tree's packages first
        (work / ".venv").symlink_to(Path(sys.prefix))
        script = "\n".join([
            "set -euo pipefail", block.replace(DEFAULT_API, f"API={server.base}"),
            'echo "VERSION=$VERSION"',
            f"{sys.executable} - <<'PYTHON_BLOCK'\n{client}PYTHON_BLOCK",
            f"export DEBM_URL={server.base}", remote, "echo REMOTE-DONE"])
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        run = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True,
                             timeout=900, env=env)
        assert run.returncode == 0, (f"README block failed ({run.returncode}):\n"
                                     f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}\n"
                                     f"{dump_logs(server.proc)}")
        out = run.stdout
        assert decode_png((work / "grid.png").read_bytes()).size[0] > 28
        assert len(json.loads((work / "grid.json").read_text())["images"]) == 36
        assert len(json.loads((work / "samples.json").read_text())["images"]) == 16
        assert '"filename":"digit-7.png"' in out and '"is_ood":true' in out
        assert "VERSION=1" in out
        assert '"name":"mine","default_version":1' in out
        # the cancel reached a job that was still queued or running
        assert re.search(r'"kind":"generate","owner":"\w+","status":"(cancelled|running)"',
                         out)
        # the Python block: scores, the event stream, a training result, an error
        assert "[('digit-7.png'," in out and "'photo.jpg'" in out
        assert re.search(r"^end None None None$", out, flags=re.M)
        assert re.search(r"^preview (latent|pixel) \d+ ", out, flags=re.M)
        assert "mine:2 [" in out and "404 unknown model 'nosuchmodel'" in out
        # the debm remote block
        assert (work / "grid.png").is_file() and list((work / "previews").glob("*.png"))
        assert (work / "runs" / "mine" / "history.json").is_file()
        assert '"default_version": 1' in out and "REMOTE-DONE" in out
        assert re.search(r'"status": "(cancelled|running)", "cancel_requested": true', out)
    finally:
        server.proc.kill()


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

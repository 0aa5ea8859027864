"""The README's API block, extracted from README.md and run by bash, top to bottom, against a
live `debm serve` (the demo checkpoint, a generated admin key in var/debm/api-key, the
files of examples/), exactly as a user would after `./run.sh serve`.  Every curl uses
--fail-with-body and the script runs under `set -euo pipefail`, so any error answer fails
the test."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.support import REPO, decode_png, dump_logs

from .conftest import start_serve

pytestmark = pytest.mark.system

DEFAULT_API = "API=http://127.0.0.1:8000"


def readme_api_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## The API\n"):]
    match = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    assert match, "README.md: no ```bash block under '## The API'"
    return match.group(1)


def test_every_readme_api_command_runs_as_written(tmp_path):
    block = readme_api_block()
    assert block.count(DEFAULT_API) == 1 and " -s " not in block
    work = tmp_path / "clone"  # the README's working directory: var/debm and examples/
    (work / "var").mkdir(parents=True)
    (work / "examples").symlink_to(REPO / "examples")
    server = start_serve(work / "var" / "debm", tmp_path, keys=False,
                         seed_checkpoint=REPO / "checkpoints" / "demo")
    try:
        script = "set -euo pipefail\n" + block.replace(DEFAULT_API, f"API={server.base}") + \
            '\necho "VERSION=$VERSION"\n'
        run = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True,
                             timeout=600)
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

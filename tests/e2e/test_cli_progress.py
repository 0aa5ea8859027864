"""Local commands show a progress bar when stderr is a terminal (a real pseudo-terminal
here) and stay quiet in logs and pipes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios

from tests.support import PYTHON, REPO


def run_on_terminal(args: list[str], cwd) -> tuple[int, str, str]:
    """Run ``debm ARGS`` with stderr on a pseudo-terminal; returns (rc, stdout, terminal)."""
    master, slave = pty.openpty()
    # a real terminal has a size (tqdm draws nothing in 0 columns)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    proc = subprocess.Popen([PYTHON, "-m", "debm.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    # poll(), not select(): select() cannot watch a descriptor above 1023, which a long test
    # session (many app clients and stores before this test) reaches.
    poller = select.poll()
    poller.register(master, select.POLLIN)
    while True:
        if poller.poll(500):
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    rc = proc.wait(timeout=300)
    os.close(master)
    return rc, stdout, b"".join(chunks).decode(errors="replace")


def test_sample_shows_a_bar_on_a_terminal_only(tiny_checkpoint, tmp_path):
    args = ["sample", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--steps-latent", "30",
            "--steps-pixel", "30", "--out", str(tmp_path / "grid.png")]
    rc, stdout, terminal = run_on_terminal(args, REPO)
    assert rc == 0, terminal
    assert json.loads(stdout)["steps"] == 60
    # tqdm's bar: the stage as description, the step count out of 60, a bar
    assert "sample pixel" in terminal and "60/60" in terminal and "|" in terminal, terminal
    assert "sample latent" in terminal
    piped = subprocess.run([PYTHON, "-m", "debm.cli", *args], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert piped.returncode == 0 and piped.stderr == ""


def test_train_shows_a_bar_on_a_terminal(tmp_path):
    rc, stdout, terminal = run_on_terminal(
        ["train", "--dataset", "mnist5k", "--preset", "tiny", "--iters", "3", "--warmup", "2",
         "--out", str(tmp_path / "run")], REPO)
    assert rc == 0, terminal
    # debm.progress's bar, as for sample: the phase in its description, the losses after it
    assert "5/5" in terminal and "train contrastive" in terminal, terminal
    assert "negative_energy=" in terminal, terminal

"""Event tokens (issue 23, error paths 2, 6 and 10), against a real `debm serve`: a bad secret
file is replaced with a log line, a non-ASCII token is a 401 (not a 500), and no token
reaches the access log."""

from __future__ import annotations

import logging
import os
import stat

import httpx
import pytest

from service.event_tokens import SECRET_FILE, load_secret
from tests.support import PYTHON, USE_HEADERS
from tests.support.processes import Proc, dump_logs, free_port, service_env, wait_job
from tests.system.conftest import wait_ready

pytestmark = pytest.mark.system


@pytest.mark.parametrize("content", ["", "abcd", "zz" * 32, "00" * 31, "11" * 33])
def test_a_bad_secret_file_is_replaced_with_a_log_line(tmp_path, caplog, content):
    (tmp_path / SECRET_FILE).write_text(content)
    with caplog.at_level(logging.WARNING, logger="debm.api"):
        secret = load_secret(tmp_path)
    assert len(secret) == 32 and secret != b"\0" * 32
    assert (tmp_path / SECRET_FILE).read_text() == secret.hex()
    assert "does not hold a 32-byte secret" in caplog.text
    assert load_secret(tmp_path) == secret  # read back as it is now: no second warning
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no staging file left


def test_a_new_secret_is_private_and_stable(tmp_path):
    secret = load_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(secret) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(tmp_path) == secret


def test_tokens_at_the_boundary(tmp_path, procs, tiny_checkpoint):
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_text("")  # a crash at first start left it empty
    env = service_env(data, seed_checkpoint=tiny_checkpoint)
    port = free_port()
    procs.append(Proc("serve", [PYTHON, "-m", "debm.cli", "serve", "--data-dir", str(data),
                                "--port", str(port)], env, tmp_path))
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, procs)
    client = httpx.Client(base_url=base, headers=USE_HEADERS, timeout=30)
    try:
        assert len(bytes.fromhex((data / SECRET_FILE).read_text())) == 32
        job = client.post("/generate", json={"n": 1, "seed": 1, "steps_latent": 2,
                                             "steps_pixel": 2}).json()
        wait_job(client, job["job_id"], headers=USE_HEADERS)
        path = f"/jobs/{job['job_id']}/events"
        issued = client.post(path + "/token").json()
        streamed = httpx.get(base + path, params={"token": issued["token"]}, timeout=30)
        assert streamed.status_code == 200 and "event: end" in streamed.text
        for bad in ("é.é", "abc.\u2603", "\u00ff" * 40 + "." + "x" * 43):
            refused = httpx.get(base + path, params={"token": bad}, timeout=30)
            assert refused.status_code == 401, (bad, refused.status_code, refused.text)
        output = procs[-1].output()
        assert "does not hold a 32-byte secret" in output
        assert issued["token"] not in output and issued["token"][:20] not in output
        assert "token=[redacted]" in output  # the request was logged, without its token
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump_logs(*procs)}") from None
    finally:
        client.close()

"""`debm remote` and the client refuse a malformed job id with a message that says what a job
id is, before any request (issue 25 item 6): `debm remote cancel ""` used to print
"error: 307: Temporary Redirect" (DELETE /jobs/ is another route)."""

from __future__ import annotations

import pytest

from debm.cli import main
from debm.client import Client, DebmError
from tests.support.processes import free_port


@pytest.mark.parametrize("job_id", ["", "not-hex", "ABCDEF" * 6, "a" * 31, "../models"])
def test_remote_cancel_refuses_a_bad_job_id(job_id, capsys, monkeypatch):
    monkeypatch.delenv("DEBM_API_KEY", raising=False)  # refused before any key is needed
    assert main(["remote", "cancel", "0" * 32, job_id]) == 2
    err = capsys.readouterr().err
    assert f"{job_id!r} is not a job id" in err and "32 hex digits" in err
    assert "307" not in err and "Redirect" not in err


@pytest.mark.parametrize("method", ["job", "cancel", "wait", "result"])
def test_the_client_refuses_a_bad_job_id_without_a_request(method):
    # Nothing listens on this port: a request would fail with a connection error instead.
    with Client(f"http://127.0.0.1:{free_port()}", "k" * 20, retries=0) as api:
        with pytest.raises(DebmError, match="is not a job id"):
            getattr(api, method)("")

"""POST /models/{name}/versions is held to DEBM_MAX_CHECKPOINT_BYTES by the body-limit
middleware (413 before the body is read when Content-Length is over it, and while a chunked
body streams), and to multipart: the route-pattern entry "/models/{}/versions"."""

from __future__ import annotations

import pytest

from service.uploads import _route_of
from tests.support import KEY_HEADERS as H


def test_route_patterns_match_one_segment():
    limits = {"/ood-score": 1, "/models/{}/versions": 2}
    assert _route_of("/models/mine/versions", limits) == "/models/{}/versions"
    assert _route_of("/ood-score", limits) == "/ood-score"
    assert _route_of("/models/a/b/versions", limits) is None
    assert _route_of("/models/mine/default", limits) is None


def test_a_checkpoint_over_the_limit_is_413(make_client):
    client = make_client(max_checkpoint_bytes=4096)
    response = client.post("/models/big/versions", headers=H,
                           files={"file": ("big.tar", b"\0" * 8192)})
    assert response.status_code == 413, response.text
    assert "checkpoint upload" in response.json()["detail"]

    def chunked():
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=x.tar\r\n\r\n"
        for _ in range(8):
            yield b"\0" * 1024

    response = client.post("/models/big/versions", content=chunked(),
                           headers={**H, "content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413, response.text


@pytest.mark.parametrize("content_type", ["application/json", "application/x-tar"])
def test_a_checkpoint_must_be_multipart(make_client, content_type):
    client = make_client()
    response = client.post("/models/x/versions", headers={**H, "content-type": content_type},
                           content=b"{}")
    assert response.status_code == 415, response.text

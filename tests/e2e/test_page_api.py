"""The page's server side: / and its assets (no outside origin), GET /session and
GET /models/{name}/calibration."""

from __future__ import annotations

import re

import httpx
import pytest

from service.routers.page import cdf_at, histogram
from tests.support import API_KEY, USE_KEY

from .test_docs import assert_only_own_origin

pytestmark = pytest.mark.system


def test_histogram_from_quantiles():
    quantiles = [0.0, 1.0, 2.0, 4.0, 8.0]  # 0, 25, 50, 75, 100th percentiles
    assert cdf_at(-1, quantiles) == 0 and cdf_at(9, quantiles) == 1
    assert cdf_at(3.0, quantiles) == pytest.approx(0.625)
    h = histogram(quantiles, 400, bins=4)
    assert h["edges"] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert h["counts"] == [200.0, 100.0, 50.0, 50.0]


def test_page_and_assets_are_local(live):
    assert_only_own_origin(live, "/")
    page = httpx.get(live.base + "/")
    assert 'id="key" type="password"' in page.text
    script = httpx.get(live.base + "/static/app/app.js").text
    # The key is kept for the tab only; localStorage holds the last results' job ids, written
    # in one place (the browser test checks the key never lands there).
    assert "sessionStorage.setItem(KEY_SLOT, key)" in script
    assert re.findall(r"localStorage\.setItem\((\w+)", script) == ["RESULTS_SLOT"]


def test_session_and_calibration(live):
    assert httpx.get(live.base + "/session").status_code == 401
    admin = httpx.get(live.base + "/session", headers={"X-API-Key": API_KEY}).json()
    assert admin == {"key_id": "tester", "scopes": ["admin", "use"]}
    user = httpx.get(live.base + "/session", headers={"X-API-Key": USE_KEY}).json()
    assert user["scopes"] == ["use"]

    body = httpx.get(live.base + "/models/demo/calibration",
                     headers={"X-API-Key": USE_KEY}).json()
    assert body["model"] == "demo:1" and len(body["quantiles"]) == 101
    assert sum(body["histogram"]["counts"]) == pytest.approx(body["count"], rel=1e-3)
    edges = body["histogram"]["edges"]
    assert edges[0] <= body["threshold"] <= edges[-1]
    for path, status in (("/models/nosuch/calibration", 404),
                         ("/models/demo/calibration?version=7", 404),
                         ("/models/demo/calibration?version=0", 422)):
        assert httpx.get(live.base + path, headers={"X-API-Key": USE_KEY}).status_code == \
            status, path

"""/docs and /redoc render with no internet: every script, stylesheet, image and font they
load comes from the service's own origin, and each of those assets is served."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlparse

import httpx
import pytest

pytestmark = pytest.mark.system

URL_IN_TEXT = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+(?::\d+)?[^\s"'<>)]*""")


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value:
                self.refs.append(value)


def references(html: str) -> tuple[list[str], list[str]]:
    parser = Refs()
    parser.feed(html)
    return parser.refs, URL_IN_TEXT.findall(html)


def assert_only_own_origin(live, page: str) -> str:
    """Every URL in the page is on the service's origin and answers 200; returns the HTML."""
    origin = urlparse(live.base).netloc
    response = httpx.get(live.base + page, timeout=30)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    attrs, absolute = references(response.text)
    assert attrs, f"{page} loads nothing?"
    scripts = [r for r in attrs if r.endswith(".js")]
    assert scripts, f"{page}: no script"
    outside = [u for u in absolute if urlparse(u if ":" in u else "http:" + u).netloc != origin]
    assert not outside, f"{page} references other origins: {outside}"
    for ref in attrs:
        url = urljoin(live.base + page, ref)
        assert urlparse(url).netloc == origin, ref
        asset = httpx.get(url, timeout=30)
        assert asset.status_code == 200 and len(asset.content) > 100, (ref, asset.status_code)
    return response.text


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_reference_only_the_service_origin(live, page):
    html = assert_only_own_origin(live, page)
    # The OpenAPI document the page loads is served by the same origin too.
    spec_urls = re.findall(r"""['"](/openapi\.json)['"]""", html)
    assert spec_urls and httpx.get(live.base + spec_urls[0]).status_code == 200


def test_swagger_validator_badge_is_off(live):
    # Swagger UI would otherwise fetch a badge from validator.swagger.io.
    assert '"validatorUrl": null' in httpx.get(live.base + "/docs").text

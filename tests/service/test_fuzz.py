"""Schema fuzzing (schemathesis) of every operation in our OpenAPI document, through the real
app: no request may produce a 500, and every response must match the documented status codes,
content types and schemas.  Bounded for CI: a fixed number of examples per operation,
derandomized, so the run is the same every time and takes well under a minute."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_headers_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from core.registry import ModelRegistry
from core.settings import Settings
from service.app import create_app
from tests.support import ADMIN_KEYS_SPEC, KEY_HEADERS, USE_KEYS_SPEC


def no_500(ctx, response, case):
    """No internal server error.  (503 and 507 are documented answers: Redis down, disk
    full, and /readyz without a worker, as here.)"""
    if response.status_code == 500:
        raise AssertionError(f"500 internal server error: {response.text[:300]}")


CHECKS = [no_500, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
EXAMPLES = 40


# The schema is loaded when pytest collects this module, so the app exists before any fixture
# runs; the fixture below gives it the session's tiny model and removes its data afterwards.
DATA = Path(tempfile.mkdtemp(prefix="debm-fuzz-"))
APP = create_app(Settings(
    data_dir=DATA, seed_checkpoint=None, api_keys=USE_KEYS_SPEC, admin_keys=ADMIN_KEYS_SPEC,
    redis_url=None, max_wait_seconds=0.05, score_wait_seconds=0, max_generate_n=4,
    max_upload_bytes=256 * 1024, max_dataset_bytes=256 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.phases.update(phases=["examples", "fuzzing"])


@pytest.fixture(scope="module", autouse=True)
def served_model(tiny_checkpoint):
    ModelRegistry(DATA / "models").register("demo", tiny_checkpoint)
    yield
    APP.state.services.store.close()
    shutil.rmtree(DATA, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case):
    # The admin key, so requests get past authentication into validation and the handlers
    # (unauthenticated requests are covered by test_auth.py).
    case.call_and_validate(headers=KEY_HEADERS, checks=CHECKS)

"""A real S3 endpoint over HTTP for the tests: moto's standalone server as a subprocess on a
free loopback port (the code under test talks plain S3 to it, as it would to MinIO or AWS)."""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from . import wait_until
from .processes import Proc, free_port

# moto checks no signature against a user database; these only have to be present, as the
# standard AWS credential chain reads them from the environment.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, log_dir: Path | None = None, *, authenticate: bool = False):
        """``authenticate``: the server checks every request's key against its (empty) IAM
        users, so it refuses ours as a real S3 refuses a wrong key (403)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir = Path(log_dir or tempfile.mkdtemp(prefix="debm-moto-"))
        env = {**os.environ, **S3_ENV}
        if authenticate:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = Proc("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                  "-p", str(self.port)], env, log_dir)
        wait_until(self._up, timeout=60, what=f"moto S3 server on {self.url}")

    def _up(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"moto server exited:\n{self.proc.output()[-2000:]}")
        try:
            urllib.request.urlopen(self.url + "/", timeout=1).read()
            return True
        except urllib.error.HTTPError:  # an answer (403 when it checks keys): it is up
            return True
        except Exception:
            return False

    def env(self, bucket: str, *, create: bool = True) -> dict[str, str]:
        """The settings that point a service process at ``bucket`` on this server."""
        return {**S3_ENV, "DEBM_ARTIFACTS": f"s3://{bucket}/debm",
                "DEBM_S3_ENDPOINT_URL": self.url,
                "DEBM_S3_CREATE_BUCKET": "true" if create else "false"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **{
            "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]})

    def stop(self) -> None:
        self.proc.stop()


def new_bucket_name() -> str:
    return "debm-" + uuid.uuid4().hex[:12]

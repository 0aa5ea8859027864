"""Backend ``s3``: any S3-compatible store (AWS S3, MinIO, Ceph RGW, R2) through boto3.

Why boto3 (over obstore or fsspec/s3fs): it is the reference client, kept by AWS and
released weekly; ``upload_fileobj`` with a ``TransferConfig`` does multipart uploads (parts
sent as they are read, so a large dataset or checkpoint is never whole in memory);
``get_object`` returns a streamed body and takes ``Range`` for ranged reads; it reads its
credentials from the standard AWS chain (environment, shared config file, instance or pod
role) and its endpoint from ``endpoint_url`` or ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
so the same code talks to MinIO, moto or AWS.  Nothing here knows which server answers:
only plain S3 calls (PUT, GET, HEAD, ListObjectsV2, DeleteObjects, multipart).

Atomicity: a PUT (or a completed multipart upload) makes one object visible whole.  A tree
(checkpoint, snapshot, result folder) is published files first, marker last; then objects of
an older generation that the new marker no longer lists are deleted.  Checkpoint files are
named by step (``model-00000050.safetensors``), so a new snapshot never overwrites a file an
older marker still names.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .base import (ArtifactMissing, ArtifactsMisconfigured, ArtifactStore, ArtifactsUnavailable,
               check_key, check_prefix)
from .localfiles import tree_files

# Parts of 8 MiB, 4 at a time: a part in flight per thread is all a transfer holds in memory.
TRANSFER = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                          max_concurrency=4, use_threads=True)
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
NO_BUCKET_CODES = {"NoSuchBucket"}
CHUNK = 1 << 20


class S3Store(ArtifactStore):
    name = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 retry_seconds: float = 30.0):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or \
            os.environ.get("AWS_ENDPOINT_URL")
        # Short connect timeout and few retries: an API request must get its 503 in seconds;
        # workers retry whole jobs with backoff (worker.lifecycle).  A pool as large as the
        # threads that share the client (an inference worker runs 32 jobs at once).
        config = Config(connect_timeout=3, read_timeout=30, max_pool_connections=64,
                        retries={"max_attempts": 3, "mode": "standard"},
                        s3={"addressing_style": "path"})
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url,
                                                     config=config)

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "S3Store":
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ArtifactsMisconfigured(f"not an s3:// URL: {url!r}")
        return cls(parsed.netloc, parsed.path, **kwargs)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        path = f"/{self.prefix}" if self.prefix else ""
        return f"the S3 artifact store s3://{self.bucket}{path}{where}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failure(self, exc: Exception, what: str) -> Exception:
        """Our exception for a boto error: missing, or the store unavailable."""
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in MISSING_CODES:
                return ArtifactMissing(f"{what} is not in {self.describe()}")
            if code in NO_BUCKET_CODES:
                return ArtifactsUnavailable(f"{self.describe()}: bucket {self.bucket!r} "
                                            "does not exist")
            return ArtifactsUnavailable(f"{self.describe()} refused {what}: {code} "
                                        f"({exc.response.get('Error', {}).get('Message', '')})")
        if isinstance(exc, NoCredentialsError):
            return ArtifactsUnavailable(
                f"{self.describe()}: no credentials for {what} (set AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host a role)")
        return ArtifactsUnavailable(f"{self.describe()} is unreachable ({what}): {exc}")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, what) from None

    # -- start-up ---------------------------------------------------------------------------
    def check(self, *, create: bool = False) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._failure(exc, f"bucket {self.bucket!r}") from None
        except BotoCoreError as exc:
            raise self._failure(exc, f"bucket {self.bucket!r}") from None
        if not create:
            raise ArtifactsMisconfigured(
                f"{self.describe()}: bucket {self.bucket!r} does not exist; create it, or set "
                "DEBM_S3_CREATE_BUCKET=true to have the service create it at start")
        region = self.client.meta.region_name
        extra = {} if region in (None, "us-east-1", "aws-global") else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:  # another replica created it meanwhile
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._failure(exc, f"creating bucket {self.bucket!r}") from None

    # -- single objects ---------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> None:
        with self._op("put", len(data)):
            self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key),
                       Body=data)

    def put_file(self, key: str, path: Path) -> None:
        with self._op("put", Path(path).stat().st_size), open(path, "rb") as source:
            self._call(key, self.client.upload_fileobj, source, self.bucket, self._key(key),
                       Config=TRANSFER)

    def get_bytes(self, key: str) -> bytes:
        with self._op("get") as moved:
            answer = self._call(key, self.client.get_object, Bucket=self.bucket,
                                Key=self._key(key))
            data = self._call(key, answer["Body"].read)
            moved[0] = len(data)
            return data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (an HTTP Range read)."""
        with self._op("get_range") as moved:
            answer = self._call(key, self.client.get_object, Bucket=self.bucket,
                                Key=self._key(key), Range=f"bytes={start}-{start + length - 1}")
            data = self._call(key, answer["Body"].read)
            moved[0] = len(data)
            return data

    def open_read(self, key: str) -> BinaryIO:
        with self._op("open"):
            answer = self._call(key, self.client.get_object, Bucket=self.bucket,
                                Key=self._key(key))
            return answer["Body"]

    def fetch_file(self, key: str, target: Path) -> Path:
        target = Path(target)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._op("fetch") as moved:
            answer = self._call(key, self.client.get_object, Bucket=self.bucket,
                                Key=self._key(key))
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    body = answer["Body"]
                    while chunk := self._call(key, body.read, CHUNK):
                        out.write(chunk)
                        moved[0] += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if moved[0] != answer.get("ContentLength", moved[0]):
                    raise ArtifactsUnavailable(f"{self.describe()}: {key} arrived truncated")
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target

    def exists(self, key: str) -> bool:
        with self._op("head"):
            try:
                self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
                return True
            except ArtifactMissing:
                return False

    def list(self, prefix: str) -> list[tuple[str, int]]:
        full = self._key(check_prefix(prefix).rstrip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        found: list[tuple[str, int]] = []
        with self._op("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            try:
                for page in pages:
                    for item in page.get("Contents", []):
                        found.append((item["Key"][strip:], int(item["Size"])))
            except (ClientError, BotoCoreError) as exc:
                raise self._failure(exc, f"listing {prefix}") from None
        return sorted(found)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 at most
            batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                       Delete={"Objects": batch, "Quiet": True})

    def delete_prefix(self, prefix: str) -> None:
        keys = [key for key, _ in self.list(prefix)]
        with self._op("delete"):
            self._delete_keys(keys)

    # -- trees ------------------------------------------------------------------------------
    def put_tree(self, prefix: str, directory: Path, *, marker: str,
                 move: bool = False) -> None:
        prefix = check_prefix(prefix)
        files = tree_files(Path(directory))
        if not any(f.name == marker for f in files):
            raise ValueError(f"{directory} has no {marker}")
        before = {key for key, _ in self.list(prefix)}
        for item in files:
            if item.name != marker:
                self.put_file(prefix + item.name, item)
        self.put_bytes(prefix + marker, (Path(directory) / marker).read_bytes())
        # An older generation's files that the new marker does not list (the files of a
        # tree are all top level: nested keys belong to other trees and stay).
        published = {prefix + f.name for f in files}
        stale = [k for k in before - published if "/" not in k[len(prefix):]]
        if stale:
            with self._op("delete"):
                self._delete_keys(stale)

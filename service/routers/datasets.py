"""POST /datasets (upload a zip of images or an .npz) and GET /datasets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.artifacts import ArtifactMissing
from core.artifacts.keys import DATASET_MARKER, dataset_prefix
from core.datadir import DATASET_ID_RE, new_dataset_id
from model.formats.files import atomic_write_bytes

from ..dataset_check import (DatasetRejected, check_image_zip, check_npz,
                             detect_format)
from ..deps import AdminPrincipal, ServicesDep
from ..idempotency import IdempotencyKey, accept, fingerprint
from ..schemas import DatasetInfo, DatasetList, errors
from ..uploads import _clean_filename, read_form

router = APIRouter(tags=["datasets"])

MULTIPART_DATASET = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {
                "type": "string", "format": "binary",
                "description": "a .zip of PNG/JPEG/WebP images, or an .npz whose array 'x' "
                               "(or 'images') holds (N, H, W[, C]) or (N, C, H, W) images"}}}}}}}


@router.post("/datasets", status_code=201, response_model=DatasetInfo,
             openapi_extra=MULTIPART_DATASET,
             responses=errors(400, 401, 403, 409, 413, 415, 422, 507))
async def upload_dataset(request: Request, services: ServicesDep, principal: AdminPrincipal,
                         idempotency_key: IdempotencyKey = None):
    settings = services.settings
    form = await read_form(request, max_files=2)
    try:
        uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(uploads) != 1:
            raise HTTPException(422, f"send exactly one file part (got {len(uploads)}), e.g. "
                                     "-F file=@digits.zip")
        upload = uploads[0]
        filename = _clean_filename(upload.filename, "upload")
        dataset_id = new_dataset_id()
        # Checked in a local staging folder (the checks need a seekable file), then
        # published to the artifact store: the data file first, meta.json (the marker) last.
        staging = services.data.datasets / f".incoming-{dataset_id}"

        def store_and_check() -> DatasetInfo:
            staging.mkdir(parents=True)
            try:
                raw, size, digest = _receive(upload.file, staging / "upload.bin")
                with open(raw, "rb") as handle:
                    fmt = detect_format(handle.read(4), filename)
                check = check_image_zip if fmt == "zip" else check_npz
                summary = check(raw, max_images=settings.max_dataset_images,
                                max_pixels=settings.max_image_pixels,
                                max_uncompressed=4 * settings.max_dataset_bytes)
                file = f"data.{fmt}"
                os.rename(raw, staging / file)
                info = DatasetInfo(dataset_id=dataset_id, format=fmt, count=summary.count,
                                   channels=summary.channels, height=summary.height,
                                   width=summary.width, bytes=size, filename=filename,
                                   created=time.time())
                meta = {**info.model_dump(), "file": file, "sha256": digest,
                        "owner": principal.key_id}
                atomic_write_bytes(staging / DATASET_MARKER, json.dumps(meta, indent=2).encode())
                services.artifacts.put_tree(dataset_prefix(dataset_id), staging,
                                            marker=DATASET_MARKER, move=True)
                return info
            finally:
                shutil.rmtree(staging, ignore_errors=True)

        return await _accept(services, principal.key_id, idempotency_key, filename,
                             upload, store_and_check)
    finally:
        await form.close()


async def _accept(services, owner: str, idempotency_key: str | None, filename: str, upload,
                  store_and_check) -> JSONResponse:
    """Store and check the upload once per Idempotency-Key (service.idempotency)."""
    async def create() -> JSONResponse:
        try:
            info = await run_in_threadpool(store_and_check)
        except DatasetRejected as exc:
            raise HTTPException(exc.status, f"dataset {filename!r} refused: {exc}") from None
        return JSONResponse(info.model_dump(mode="json"), status_code=201)

    request_print = fingerprint("/datasets", {}, [
        filename, await run_in_threadpool(_file_digest, upload.file)]) \
        if idempotency_key else None
    return await accept(services, owner, idempotency_key, request_print, create)


def _file_digest(handle) -> str:
    digest = hashlib.sha256()
    handle.seek(0)
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest()


@router.get("/datasets", response_model=DatasetList, responses=errors(401, 403))
async def list_datasets(services: ServicesDep, principal: AdminPrincipal):
    """Uploaded datasets (admin keys: datasets are training material)."""
    def read() -> list[DatasetInfo]:
        out = []
        for key, _ in services.artifacts.list("datasets"):
            parts = key.split("/")
            if len(parts) != 3 or parts[2] != DATASET_MARKER or \
                    not DATASET_ID_RE.match(parts[1]):
                continue  # a dataset without its marker is not there yet
            try:
                meta = json.loads(services.artifacts.get_bytes(key))
                out.append(DatasetInfo(**{k: meta[k] for k in DatasetInfo.model_fields}))
            except (ArtifactMissing, ValueError, KeyError):
                continue
        return sorted(out, key=lambda d: d.created, reverse=True)

    return DatasetList(datasets=await run_in_threadpool(read))


def _receive(source, target):
    """Stream an upload to a local file: (path, bytes, sha256)."""
    digest, size = hashlib.sha256(), 0
    source.seek(0)
    with open(target, "wb") as out:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return target, size, digest.hexdigest()

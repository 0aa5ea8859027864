"""Real image, archive and multipart bytes, encoded by Pillow, zipfile and numpy."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image


def image_bytes(fmt: str = "PNG", *, size=(28, 28), mode: str = "L", seed: int = 0,
                **save) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    array = (rng.random(shape) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def digit_png(seed: int = 0) -> bytes:
    """A bright stroke on black, roughly digit-like."""
    image = np.zeros((28, 28), dtype=np.uint8)
    col = 8 + seed % 10
    image[4:24, col:col + 4] = 255
    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def png_16bit() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def animated_png() -> bytes:
    frames = [Image.new("L", (16, 16), color=c) for c in (0, 128, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def image_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def multipart_fields_only(**fields: str) -> tuple[bytes, str]:
    """A multipart body with text fields and no file part (httpx would send urlencoded)."""
    boundary = "fieldsonly"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             for k, v in fields.items()]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def decode_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image

"""Safe decoding of untrusted image files with Pillow only (no torch).

Shared by the CLI, the dataset loaders, the API (which must not import torch) and the workers.
Pillow is told exactly which formats to try, the pixel limit is checked from the header, the
file is verified and then reopened (verify() leaves the image unusable), and every frame count,
mode and size is checked before any pixel is decoded.

Memory: a caller that needs the image only at a small size passes ``shrink_to``; JPEG is then
decoded at a reduced DCT scale (Pillow's ``draft``), other formats are decoded once and reduced
by an integer box factor (``Image.reduce``) before anything else is done with them, and the
full-size decode is closed (its pixel memory released) before ``decode_image`` returns.  So
one call holds at most one full-size image, and a caller that decodes files one at a time holds
one at a time.  ``DECODES`` counts those full-size images (tests assert on it).

One path to model pixels: ``model_pixels`` (decode shrunk, convert the colour, resize) is what
the CLI's ``debm score`` uses, and the worker's scoring task runs the same two steps
(``decode_image(shrink_to=...)`` then ``fit_to_model`` through ``model.images``), so a file
scores the same offline and through the API.  (They once differed: the CLI decoded JPEG at full
size, the worker at libjpeg's reduced DCT scale, 1e-3 apart on ``examples/photo.jpg``.)

Thread safety: nothing here touches process-wide state.  The caller's pixel limit is checked
from the header by ``_check_header`` before any pixel is decoded; Pillow's own global
``Image.MAX_IMAGE_PIXELS`` (and the warning filters) are left as they are, so decoding from
many threads at once cannot restore each other's values (issue 23, error path 9).  Pillow's
own bomb error (above twice its global limit, about 179 million pixels) still applies.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from .errors import UserError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096
# Modes we convert to L or RGB without losing meaning.  16-bit grey PNG ("I;16", its range
# fixed at 0..65535 by the PNG standard) is scaled to 8 bits; 32-bit integer and float modes
# ("I", "F") are refused: their value range is ambiguous.
_DEEP_GREY_MODES = {"I;16", "I;16B", "I;16L"}
_GREY_MODES = {"1", "L", "P", "LA", "La"} | _DEEP_GREY_MODES
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "PA"}

# Truncated files must fail, not be silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(UserError, ValueError):
    """The bytes are not an acceptable image; the message says why (for a 4xx answer)."""

    def __init__(self, message: str, *, kind: str = "invalid_image"):
        super().__init__(message)
        self.kind = kind  # invalid_image | unsupported_format | too_large


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # mode "L" or "RGB", fully loaded
    format: str
    original_mode: str
    width: int
    height: int


class DecodeCounter:
    """How many decoded images (before any shrinking) are alive at once, process-wide.

    Incremented when a file's pixels are decoded, decremented when that decode is closed;
    ``peak`` is the most ever alive together since ``reset``.  A structural measure of the
    memory a request holds (its largest part), independent of timings."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.alive = self.peak = self.decoded = self.decoded_pixels = 0

    def opened(self, pixels: int) -> None:
        with self._lock:
            self.alive += 1
            self.decoded += 1
            self.decoded_pixels += pixels
            self.peak = max(self.peak, self.alive)

    def closed(self) -> None:
        with self._lock:
            self.alive -= 1


DECODES = DecodeCounter()


@dataclass(frozen=True)
class ImageHeader:
    format: str
    mode: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@contextmanager
def _untrusted(data: bytes, *, formats: tuple[str, ...]) -> Iterator[None]:
    """What Pillow raises inside becomes an ImageRejected that says what was wrong.  No global
    is set or restored here (module docstring: thread safety); the pixel limit is checked from
    the header by ``_check_header``."""
    if not data:
        raise ImageRejected("empty file")
    try:
        yield
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image too large: {exc}", kind="too_large") from None
    except Image.UnidentifiedImageError:
        raise _unidentified(data, formats) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                formats: tuple[str, ...] = ACCEPTED_FORMATS) -> ImageHeader:
    """Format, mode and size from the header alone (no pixel is decoded); the same size,
    frame and mode checks as ``decode_image``.  Lets a caller add up a request's pixels and
    refuse it before decoding anything."""
    with _untrusted(data, formats=formats):
        with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
            _check_header(probe, max_pixels)
            return ImageHeader(probe.format or "?", probe.mode, *probe.size)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS,
                 allow_alpha: bool = True, shrink_to: int | None = None) -> DecodedImage:
    """Decode untrusted bytes into a loaded L or RGB image, or raise ImageRejected.

    Images with transparency are composited onto black, the MNIST background, so a scored
    RGBA, LA or transparent-palette file gets the score of what it shows; dataset loaders pass
    ``allow_alpha=False`` (what is under the alpha of a training image is undefined).

    ``shrink_to``: the caller only needs the image with its longer side at this size; the
    result keeps its longer side at least this long (so a later antialiased resize sees every
    input pixel), shrunk while decoding where the format allows it (module docstring)."""
    with _untrusted(data, formats=formats):
        with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
            fmt = probe.format or "?"
            _check_header(probe, max_pixels)
            probe.verify()
        # verify() leaves the file unusable: decode from a fresh open.
        mode, converted = _decode_small(data, formats, allow_alpha=allow_alpha,
                                        shrink_to=shrink_to)
    return DecodedImage(image=converted, format=fmt, original_mode=mode,
                        width=converted.width, height=converted.height)


# File signatures: bytes that start like an accepted format but that Pillow cannot open are a
# damaged file of that format (e.g. a PNG whose IHDR checksum fails), not another format.
_SIGNATURES = {"PNG": lambda d: d.startswith(b"\x89PNG\r\n\x1a\n"),
               "JPEG": lambda d: d.startswith(b"\xff\xd8\xff"),
               "WEBP": lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP"}


def _unidentified(data: bytes, formats: tuple[str, ...]) -> ImageRejected:
    for fmt in formats:
        if _SIGNATURES.get(fmt, lambda d: False)(data):
            return ImageRejected(f"corrupt or truncated image: a {fmt} file whose header "
                                 "does not parse (bad checksum or cut short)")
    return ImageRejected(f"not an accepted image; accepted formats: {', '.join(formats)}",
                         kind="unsupported_format")


def _decode_small(data: bytes, formats: tuple[str, ...], *, allow_alpha: bool,
                  shrink_to: int | None) -> tuple[str, Image.Image]:
    """Decode, shrink and convert; the full-size decode is closed before this returns."""
    image = Image.open(io.BytesIO(data), formats=list(formats))
    counted, keep = False, False
    try:
        mode = image.mode
        if shrink_to and image.format == "JPEG":
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the requested size.
            image.draft(None, (shrink_to, shrink_to))
        image.load()
        DECODES.opened(image.width * image.height)
        counted = True
        small = image
        factor = max(1, max(image.size) // shrink_to) if shrink_to else 1
        if factor > 1 and image.mode in ("L", "RGB"):
            small = image.reduce(factor)  # box average; the longer side stays >= shrink_to
        converted = _to_l_or_rgb(small, allow_alpha=allow_alpha)
        if factor > 1 and converted.size == image.size:  # palette, CMYK ...: reduce now
            converted = converted.reduce(factor)
        keep = converted is image  # nothing to shrink or convert: the decode is the result
        return mode, converted
    finally:
        if not keep:
            image.close()  # releases the full-size pixels now, not at garbage collection
        if counted:
            DECODES.closed()


def _check_header(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected("image has no pixels")
    if width * height > max_pixels:
        raise ImageRejected(f"image too large: it has {width}x{height} pixels; the limit is "
                            f"{max_pixels}",
                            kind="too_large")
    if getattr(image, "n_frames", 1) > 1 or getattr(image, "is_animated", False):
        raise ImageRejected("animated or multi-frame images are not accepted; send one frame")
    if image.mode not in _GREY_MODES | _COLOUR_MODES:
        raise ImageRejected(
            f"pixel mode {image.mode!r} is not accepted (32-bit and float images are refused); "
            "send 8- or 16-bit grey or 8-bit colour")


def _to_l_or_rgb(image: Image.Image, *, allow_alpha: bool) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info)
    if has_alpha and not allow_alpha:
        raise ImageRejected("images with an alpha channel are not accepted")
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
        return image.convert("RGB")
    if image.mode == "L" or image.mode == "RGB":
        return image
    if image.mode in _DEEP_GREY_MODES:
        # 0..65535 -> 0..255, rounded (v / 257 maps 65535 to 255 exactly).
        deep = np.asarray(image, dtype=np.uint32)
        return Image.fromarray(((deep + 128) // 257).astype(np.uint8), mode="L")
    if image.mode in _GREY_MODES:
        return image.convert("L")
    return image.convert("RGB")


def read_image_file(path: str, **kwargs) -> DecodedImage:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageRejected(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, **kwargs)


def fit_to_model(image: Image.Image, *, image_size: int, channels: int) -> np.ndarray:
    """A decoded L/RGB image -> uint8 (channels, image_size, image_size), the model's input.

    Colour first: grey becomes RGB by repetition, RGB becomes grey by ITU-R 601 luma (Pillow's
    "L" conversion, the same weights as ``model.conform``).  Then the longer side is resized to
    ``image_size`` with Pillow's bilinear filter (antialiased when shrinking: its support widens
    with the scale) and a non-square image is centred and padded with its border's mean."""
    if channels == 1 and image.mode != "L":
        image = image.convert("L")
    elif channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (image_size, image_size):
        scale = image_size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy, never Pillow's buffer
    array = array[:, :, None] if array.ndim == 2 else array
    height, width = array.shape[:2]
    if (height, width) != (image_size, image_size):
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        fill = np.round(border.mean(axis=0)).astype(np.uint8)
        canvas = np.empty((image_size, image_size, array.shape[2]), dtype=np.uint8)
        canvas[:] = fill
        top, left = (image_size - height) // 2, (image_size - width) // 2
        canvas[top:top + height, left:left + width] = array
        array = canvas
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def model_pixels(data: bytes, *, image_size: int, channels: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS) -> np.ndarray:
    """Untrusted bytes -> the model's uint8 (channels, image_size, image_size) pixels: the one
    decode (shrunk while decoding, alpha composited onto black), colour conversion and resize
    that every scoring path uses (module docstring)."""
    decoded = decode_image(data, max_pixels=max_pixels, formats=formats, shrink_to=image_size)
    try:
        return fit_to_model(decoded.image, image_size=image_size, channels=channels)
    finally:
        decoded.image.close()

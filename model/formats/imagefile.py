"""Safe decoding of untrusted image files with Pillow only (no torch).

Shared by the CLI, the dataset loaders, the API (which must not import torch) and the workers.
Pillow is told exactly which formats to try, decompression-bomb warnings become errors, the
file is verified and then reopened (verify() leaves the image unusable), and every frame count,
mode and size is checked before any pixel is decoded.

Memory: a caller that needs the image only at a small size passes ``shrink_to``; JPEG is then
decoded at a reduced DCT scale (Pillow's ``draft``), other formats are decoded once and reduced
by an integer box factor (``Image.reduce``) before anything else is done with them, and the
full-size decode is closed (its pixel memory released) before ``decode_image`` returns.  So
one call holds at most one full-size image, and a caller that decodes files one at a time holds
one at a time.  ``DECODES`` counts those full-size images (tests assert on it).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageFile

from .errors import UserError

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
DEFAULT_MAX_PIXELS = 4096 * 4096
# Modes we convert to L or RGB without losing meaning.  16/32-bit integer and float modes
# ("I;16", "I", "F") are refused: their value range is ambiguous.
_GREY_MODES = {"1", "L", "P", "LA", "La"}
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
def _untrusted(data: bytes, *, max_pixels: int, formats: tuple[str, ...]) -> Iterator[None]:
    """Pillow under this caller's pixel limit with decompression-bomb warnings as errors; what
    Pillow raises inside becomes an ImageRejected that says what was wrong."""
    if not data:
        raise ImageRejected("empty file")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
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
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                formats: tuple[str, ...] = ACCEPTED_FORMATS) -> ImageHeader:
    """Format, mode and size from the header alone (no pixel is decoded); the same size,
    frame and mode checks as ``decode_image``.  Lets a caller add up a request's pixels and
    refuse it before decoding anything."""
    with _untrusted(data, max_pixels=max_pixels, formats=formats):
        with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
            _check_header(probe, max_pixels)
            return ImageHeader(probe.format or "?", probe.mode, *probe.size)


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS,
                 allow_alpha: bool = False, shrink_to: int | None = None) -> DecodedImage:
    """Decode untrusted bytes into a loaded L or RGB image, or raise ImageRejected.

    Images with transparency are refused by default (what is under the alpha is undefined);
    with ``allow_alpha=True`` they are composited onto black, the MNIST background.

    ``shrink_to``: the caller only needs the image with its longer side at this size; the
    result keeps its longer side at least this long (so a later antialiased resize sees every
    input pixel), shrunk while decoding where the format allows it (module docstring)."""
    with _untrusted(data, max_pixels=max_pixels, formats=formats):
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
        raise ImageRejected(f"image has {width}x{height} pixels; the limit is {max_pixels}",
                            kind="too_large")
    if getattr(image, "n_frames", 1) > 1 or getattr(image, "is_animated", False):
        raise ImageRejected("animated or multi-frame images are not accepted; send one frame")
    if image.mode not in _GREY_MODES | _COLOUR_MODES:
        raise ImageRejected(
            f"pixel mode {image.mode!r} is not accepted (16-bit and float images are refused); "
            "send 8-bit grey or colour")


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

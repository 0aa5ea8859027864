"""Safe decoding of untrusted image files with Pillow only (no torch).

Shared by the CLI, the dataset loaders, the API (which must not import torch) and the workers.
Pillow is told exactly which formats to try, decompression-bomb warnings become errors, the
file is verified and then reopened (verify() leaves the image unusable), and every frame count,
mode and size is checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
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


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS,
                 allow_alpha: bool = False) -> DecodedImage:
    """Decode untrusted bytes into a loaded L or RGB image, or raise ImageRejected.

    Images with transparency are refused by default (what is under the alpha is undefined);
    with ``allow_alpha=True`` they are composited onto black, the MNIST background."""
    if not data:
        raise ImageRejected("empty file")
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                with Image.open(io.BytesIO(data), formats=list(formats)) as probe:
                    fmt = probe.format or "?"
                    _check_header(probe, max_pixels)
                    probe.verify()
            except ImageRejected:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected(f"image too large: {exc}", kind="too_large") from None
            except Image.UnidentifiedImageError:
                raise ImageRejected(
                    f"not an accepted image; accepted formats: {', '.join(formats)}",
                    kind="unsupported_format") from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise ImageRejected(f"corrupt or truncated image: {exc}") from None
            try:
                with Image.open(io.BytesIO(data), formats=list(formats)) as image:
                    mode = image.mode
                    image.load()
                    converted = _to_l_or_rgb(image, allow_alpha=allow_alpha)
            except ImageRejected:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageRejected(f"image too large: {exc}", kind="too_large") from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return DecodedImage(image=converted, format=fmt, original_mode=mode,
                        width=converted.width, height=converted.height)


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

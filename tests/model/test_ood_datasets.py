"""Any dataset spec is an OOD set for eval-ood; CIFAR-100 folders load."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from debm.cli import main as cli_main
from model.data import DatasetError, load_dataset
from model.evaluation import evaluate_ood


def _cifar100(folder, n_train=12, n_test=6):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"x"] * 100}))
    return folder


def test_cifar100_folder_loads_train_and_test(tmp_path):
    data = load_dataset(str(_cifar100(tmp_path / "c100")), image_size=32, channels=3)
    assert data.images.shape == (18, 3, 32, 32) and data.labels.tolist()[:3] == [0, 1, 2]


def test_a_pickle_with_code_is_refused(tmp_path):
    folder = _cifar100(tmp_path / "bad")
    (folder / "train").write_bytes(pickle.dumps({b"data": print}))
    with pytest.raises(DatasetError, match="refused"):
        load_dataset(str(folder), image_size=32, channels=3)


def test_eval_ood_takes_dataset_specs_as_ood_sets(tmp_path, tiny_checkpoint):
    folder = _cifar100(tmp_path / "c100")
    npz = tmp_path / "blank.npz"
    np.savez(npz, x=np.zeros((5, 8, 8), dtype=np.uint8))
    report = evaluate_ood(tiny_checkpoint, per_set=4, device="cpu", sets=(),
                          datasets={"cifar100": str(folder), "blank": str(npz)})
    assert set(report["ood"]) == {"cifar100", "blank"}
    assert all(0.0 <= m["auroc"] <= 1.0 for m in report["ood"].values())
    out = tmp_path / "ood.json"
    assert cli_main(["eval-ood", "--checkpoint", str(tiny_checkpoint), "--per-set", "4",
                     "--device", "cpu", "--sets", "uniform", "--ood-data",
                     f"c100={folder}", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())["ood"]) == {"uniform", "c100"}

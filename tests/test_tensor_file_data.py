"""TensorFileDataModule and select_class_anchors: round trips and every bad-input message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaells.data.anchors import select_class_anchors
from vaells.data.datamodules import TensorFileDataModule


def _labelled(num_per_class: int = 20, num_classes: int = 3, sample_shape=(4,)) -> dict[str, torch.Tensor]:
    """x[i] is filled with i, so every sample can be traced back to its row."""
    num = num_per_class * num_classes
    rows = torch.arange(num, dtype=torch.float32).reshape(num, *[1] * len(sample_shape))
    x = rows.expand(num, *sample_shape)
    labels = torch.arange(num) % num_classes
    return {"x": x.clone(), "labels": labels}


def _save(tmp_path, arrays: dict, suffix: str = ".pt"):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    else:
        torch.save(arrays, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_round_trip(tmp_path, suffix: str) -> None:
    arrays = _labelled(sample_shape=(1, 2, 2))
    dm = TensorFileDataModule(str(_save(tmp_path, arrays, suffix)), anchors_per_class=2, batch_size=7,
                              val_fraction=0.2, test_fraction=0.1, seed=0)
    assert dm.input_shape == (1, 2, 2) and dm.num_classes == 3
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (42, 12, 6)
    # The splits partition the file's rows.
    rows = torch.cat([s.tensors["x"][:, 0, 0, 0] for s in (dm.train_set, dm.val_set, dm.test_set)])
    assert sorted(rows.long().tolist()) == list(range(60))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x", "label", "index"}
    assert batch["x"].shape == (7, 1, 2, 2) and batch["x"].dtype == torch.float32
    assert batch["label"].dtype == torch.long
    torch.testing.assert_close(batch["label"], batch["x"][:, 0, 0, 0].long() % 3)
    # Anchors: class-major, drawn from the training split only, each of its own class.
    assert dm.anchors.shape == (6, 1, 2, 2) and dm.anchor_labels.tolist() == [0, 0, 1, 1, 2, 2]
    anchor_rows = dm.anchors[:, 0, 0, 0].long()
    assert set(anchor_rows.tolist()) <= set(dm.train_set.tensors["x"][:, 0, 0, 0].long().tolist())
    torch.testing.assert_close(anchor_rows % 3, dm.anchor_labels)


def test_same_seed_same_split_and_anchors(tmp_path) -> None:
    path = str(_save(tmp_path, _labelled()))
    a, b = TensorFileDataModule(path, anchors_per_class=2), TensorFileDataModule(path, anchors_per_class=2)
    torch.testing.assert_close(a.anchors, b.anchors)
    torch.testing.assert_close(a.train_set.tensors["x"], b.train_set.tensors["x"])
    c = TensorFileDataModule(path, anchors_per_class=2, seed=1)
    assert not torch.equal(a.train_set.tensors["x"], c.train_set.tensors["x"])


def test_without_labels_is_one_class(tmp_path) -> None:
    dm = TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(30, 5)}, ".npz")), anchors_per_class=3)
    assert dm.num_classes == 1 and dm.anchor_labels.tolist() == [0, 0, 0]
    assert (next(iter(dm.val_dataloader()))["label"] == 0).all()


def test_file_anchors_are_used_and_sorted_class_major(tmp_path) -> None:
    arrays = _labelled(num_classes=2)
    arrays["anchors"] = torch.tensor([[10.0] * 4, [20.0] * 4, [11.0] * 4, [21.0] * 4])
    arrays["anchor_labels"] = torch.tensor([0, 1, 0, 1])
    dm = TensorFileDataModule(str(_save(tmp_path, arrays)), anchors_per_class=5)
    assert dm.anchor_labels.tolist() == [0, 0, 1, 1]
    assert dm.anchors[:, 0].tolist() == [10.0, 11.0, 20.0, 21.0]
    assert dm.anchors_per_class == 2  # taken from the file, not the argument


def test_select_class_anchors_contract() -> None:
    arrays = _labelled(num_per_class=5, num_classes=4)
    anchors, anchor_labels = select_class_anchors(arrays["x"], arrays["labels"], 3, seed=0)
    assert anchors.shape == (12, 4) and anchor_labels.dtype == torch.long
    assert anchor_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    torch.testing.assert_close(anchors[:, 0].long() % 4, anchor_labels)
    assert len(set(anchors[:, 0].tolist())) == 12  # without replacement
    again, _ = select_class_anchors(arrays["x"], arrays["labels"], 3, seed=0)
    torch.testing.assert_close(anchors, again)
    with pytest.raises(ValueError, match=r"class 0 has only 5 .*data\.anchors_per_class=6"):
        select_class_anchors(arrays["x"], arrays["labels"], 6, seed=0)
    with pytest.raises(ValueError, match=r"data\.anchors_per_class must be at least 1"):
        select_class_anchors(arrays["x"], arrays["labels"], 0, seed=0)


# ---------------------------------------------------------------------------------------------------
# Bad inputs: each error names the field and says how to fix it.


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist; set data\.path"):
        TensorFileDataModule(str(path))


def test_unknown_suffix(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unknown suffix '\.csv'.*use \.pt, \.pth or \.npz"):
        TensorFileDataModule(str(path))


def test_pt_that_is_not_a_dict(tmp_path) -> None:
    path = tmp_path / "data.pt"
    torch.save(torch.randn(3, 2), path)
    with pytest.raises(ValueError, match="not a dict"):
        TensorFileDataModule(str(path))


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_missing_x(tmp_path, suffix: str) -> None:
    with pytest.raises(ValueError, match="has no 'x'"):
        TensorFileDataModule(str(_save(tmp_path, {"labels": torch.zeros(3, dtype=torch.long)}, suffix)))


def test_x_needs_a_sample_axis(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"'x' must have shape \(N, \.\.\.\).*\(N, 1\)"):
        TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(10)})))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x(tmp_path, bad: float) -> None:
    x = torch.randn(10, 3)
    x[4, 1] = bad
    with pytest.raises(ValueError, match="'x' has non-finite values .* in 1 samples, the first at index 4"):
        TensorFileDataModule(str(_save(tmp_path, {"x": x})))


def test_labels_length_mismatch(tmp_path) -> None:
    arrays = {"x": torch.randn(10, 3), "labels": torch.zeros(9, dtype=torch.long)}
    message = r"'labels' must have shape \(10,\), one per sample in 'x', got \(9,\)"
    with pytest.raises(ValueError, match=message):
        TensorFileDataModule(str(_save(tmp_path, arrays)))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0.0, 1.0] * 5), "'labels' must be integers 0..K-1"),
        (torch.tensor([0, -1] * 5), "'labels' must be non-negative"),
        (torch.tensor([0, 2] * 5), r"\[1\] never occur.*return_inverse"),
    ],
)
def test_labels_must_be_0_to_k_minus_1(tmp_path, labels, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(10, 3), "labels": labels})))


@pytest.mark.parametrize(("have", "lack"), [("anchors", "anchor_labels"), ("anchor_labels", "anchors")])
def test_anchors_and_anchor_labels_come_together(tmp_path, have: str, lack: str) -> None:
    arrays = {"x": torch.randn(10, 3), "anchors": torch.randn(2, 3), "anchor_labels": torch.zeros(2).long()}
    del arrays[lack]
    with pytest.raises(ValueError, match=f"has '{have}' but no '{lack}'; save both"):
        TensorFileDataModule(str(_save(tmp_path, arrays)))


def test_anchor_shape_must_match_samples(tmp_path) -> None:
    arrays = {"x": torch.randn(10, 3), "anchors": torch.randn(2, 4), "anchor_labels": torch.zeros(2).long()}
    with pytest.raises(ValueError, match=r"'anchors' must have shape \(K \* N_a, 3\).*got \(2, 4\)"):
        TensorFileDataModule(str(_save(tmp_path, arrays)))


def test_anchor_labels_must_fit_the_classes(tmp_path) -> None:
    arrays = {"x": torch.randn(10, 3), "anchors": torch.randn(2, 3), "anchor_labels": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match="refer to class 1, but 'labels' has only 1 classes"):
        TensorFileDataModule(str(_save(tmp_path, arrays)))
    arrays = {**_labelled(num_classes=2), "anchors": torch.randn(3, 4),
              "anchor_labels": torch.tensor([0, 0, 1])}
    with pytest.raises(ValueError, match=r"same number of anchors, got counts \[2, 1\]"):
        TensorFileDataModule(str(_save(tmp_path, arrays)))


def test_too_many_anchors_per_class(tmp_path) -> None:
    arrays = {"x": torch.randn(30, 2), "labels": torch.tensor([0] * 27 + [1] * 3)}
    message = r"class 1 has only 3 training samples.*lower data\.anchors_per_class to at most 3"
    with pytest.raises(ValueError, match=message):
        TensorFileDataModule(str(_save(tmp_path, arrays)), anchors_per_class=4, val_fraction=0.0,
                             test_fraction=0.0)


def test_anchors_per_class_at_least_one(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"data\.anchors_per_class must be at least 1, got 0"):
        TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(10, 3)})), anchors_per_class=0)


def test_fractions_must_leave_training_data(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"data\.val_fraction=0\.6 and data\.test_fraction=0\.5"):
        TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(10, 3)})), val_fraction=0.6,
                             test_fraction=0.5)


def test_unknown_keys_warn(tmp_path) -> None:
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['label'\]"):
        TensorFileDataModule(str(_save(tmp_path, {"x": torch.randn(10, 3), "label": torch.zeros(10)})),
                             anchors_per_class=1)

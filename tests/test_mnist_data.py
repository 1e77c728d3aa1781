"""MNIST data modules on tiny generated IDX files: splits, shapes, anchors, rotation. No network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import write_mnist_fixture
from torch import Tensor

from vaells.data.mnist import (
    MNIST_RAW_FILES,
    MNISTDataModule,
    RotatedMNISTDataModule,
    ensure_mnist,
    num_val,
    rotate,
    split_train_val,
)

NUM_TRAIN_FILE, NUM_TEST_FILE = 60, 20


def _make_digits(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """n distinct random "digits": a random blob with a bright square in a random place; labels 0..9."""
    images = (torch.rand(n, 28, 28, generator=gen) * 120).to(torch.uint8)
    for i, (r, c) in enumerate(torch.randint(4, 20, (n, 2), generator=gen).tolist()):
        images[i, r:r + 5, c:c + 5] = 255
    return images, torch.arange(n, dtype=torch.uint8) % 10


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist_fixture(tmp_path_factory.mktemp("mnist"), _make_digits, NUM_TRAIN_FILE, NUM_TEST_FILE)


@pytest.fixture(autouse=True)
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any download attempt fails at once, as on a machine without network."""

    def offline(self: object) -> None:
        raise RuntimeError("no network in tests")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)


def _natural(root: Path, **kwargs: object) -> MNISTDataModule:
    dm = MNISTDataModule(root=str(root), anchors_per_class=2, batch_size=8, download=False, **kwargs)
    dm.setup("fit")
    return dm


def _rotated(root: Path, **kwargs: object) -> RotatedMNISTDataModule:
    kwargs = {"anchors_per_class": 4, "batch_size": 8, **kwargs}
    dm = RotatedMNISTDataModule(root=str(root), download=False, **kwargs)
    dm.setup("fit")
    return dm


def _padded(images: Tensor) -> Tensor:
    return torch.nn.functional.pad(images, (2, 2, 2, 2))


def test_val_is_last_sixth() -> None:
    assert num_val(60_000) == 10_000
    assert num_val(5_000) == 833
    assert num_val(60) == 10


def test_split_keeps_file_order_unless_sorted_by_label() -> None:
    train, val = split_train_val(torch.arange(60) % 10)  # shuffled file: the release's head / tail
    assert torch.equal(train, torch.arange(50)) and torch.equal(val, torch.arange(50, 60))
    sorted_labels = torch.arange(60) // 6  # like the offline copy: all zeros, then all ones, ...
    train, val = split_train_val(sorted_labels)
    assert (train.numel(), val.numel()) == (50, 10)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(60))
    assert sorted_labels[train].unique().numel() == 10 and sorted_labels[val].unique().numel() > 2
    assert torch.equal(train, split_train_val(sorted_labels)[0])  # a fixed permutation, not seeded per run


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_say_where_and_how_to_fix(tmp_path: Path, download: bool) -> None:
    dm = MNISTDataModule(root=str(tmp_path), download=download)
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_RAW_FILES)
    assert "data.root" in message and "data.download=false" in message
    with pytest.raises(FileNotFoundError):
        dm.setup("fit")


def test_present_files_are_not_downloaded(mnist_root: Path) -> None:
    ensure_mnist(mnist_root, download=True)  # the download stub would raise if it were called


@pytest.mark.parametrize("bad", [{"anchors_per_class": 0}, {"batch_size": 0}])
def test_bad_sizes_fail_early_naming_the_field(bad: dict[str, int]) -> None:
    field = next(iter(bad))
    for cls in (MNISTDataModule, RotatedMNISTDataModule):
        with pytest.raises(ValueError, match=f"data.{field}"):
            cls(root="unused", **bad)


def test_natural_splits_shapes_and_range(mnist_root: Path) -> None:
    dm = _natural(mnist_root)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, NUM_TEST_FILE)
    assert dm.input_shape == (1, 28, 28) and dm.num_classes == 10 and not dm.per_sample_anchors
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"x", "label", "index"}
        assert batch["x"].shape == (8, 1, 28, 28) and batch["x"].dtype == torch.float32
        assert batch["label"].shape == (8,) and batch["label"].dtype == torch.long
        assert 0.0 <= batch["x"].min() and batch["x"].max() <= 1.0
    # The file's order is kept: train is its head, val its tail.
    file_images = torchvision.datasets.MNIST(str(mnist_root), download=False).data
    assert torch.equal(dm.train_set.images, file_images[:50])
    assert torch.equal(dm.val_set.images, file_images[50:])


def test_natural_anchors_are_class_matched_train_images(mnist_root: Path) -> None:
    dm = _natural(mnist_root)
    assert dm.anchors.shape == (10 * 2, 1, 28, 28)
    assert torch.equal(dm.anchor_labels, torch.arange(10).repeat_interleave(2))
    train_x = dm.train_set.images[:, None].float() / 255.0  # (50, 1, 28, 28)
    for anchor, label in zip(dm.anchors, dm.anchor_labels, strict=True):
        match = (train_x == anchor).flatten(1).all(dim=1)
        assert match.any() and (dm.train_set.labels[match] == label).all()


def test_natural_determinism_by_seed(mnist_root: Path) -> None:
    a, b, c = _natural(mnist_root, seed=3), _natural(mnist_root, seed=3), _natural(mnist_root, seed=4)
    assert torch.equal(a.anchors, b.anchors) and not torch.equal(a.anchors, c.anchors)
    assert torch.equal(next(iter(a.train_dataloader()))["x"], next(iter(b.train_dataloader()))["x"])


def test_rotated_batches_carry_per_sample_anchors(mnist_root: Path) -> None:
    dm = _rotated(mnist_root)
    assert dm.per_sample_anchors and dm.anchors is None and dm.input_shape == (1, 32, 32)
    assert dm.anchor_angles.tolist() == [0.0, 90.0, 180.0, 270.0]
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"x", "anchors", "label", "angle", "index"}
        assert batch["x"].shape == (8, 1, 32, 32) and batch["anchors"].shape == (8, 4, 1, 32, 32)
        assert batch["angle"].shape == (8,) and batch["angle"].dtype == torch.float32
        assert batch["label"].dtype == torch.long
        assert 0.0 <= batch["x"].min() and batch["x"].max() <= 1.0
        assert ((0.0 <= batch["angle"]) & (batch["angle"] < 350.0)).all()
    upright = _padded(dm.test_set.images[:8, None].float() / 255.0)  # test: sequential, angle 0
    assert torch.equal(batch["anchors"][:, 0], upright) and torch.equal(batch["x"], upright)
    assert torch.equal(batch["angle"], torch.zeros(8))
    assert torch.equal(batch["anchors"][:, 1], torch.rot90(upright, 1, dims=(-2, -1)))


def test_rotated_train_anchors_are_the_upright_digit(mnist_root: Path) -> None:
    dm = _rotated(mnist_root, anchors_per_class=10, batch_size=50)
    batch = next(iter(dm.train_dataloader()))
    # Find each sample's upright digit in the train split through its first (0°) anchor.
    upright = _padded(dm.train_set.images[:, None].float() / 255.0)  # (50, 1, 32, 32)
    same = (batch["anchors"][:, 0, None] == upright[None]).flatten(2).all(dim=2)  # (B, 50)
    assert (same.sum(dim=1) == 1).all()
    index = same.float().argmax(dim=1)
    assert torch.equal(batch["label"], dm.train_set.labels[index])
    assert torch.allclose(batch["x"], rotate(upright[index], batch["angle"]))
    assert batch["angle"].std() > 50.0  # angles spread over U(0, 350)


def test_rotated_angles_are_seeded_and_change_with_epoch(mnist_root: Path) -> None:
    def angles(dm: RotatedMNISTDataModule, epoch: int) -> Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([batch["angle"] for batch in loader])

    a, b, c = _rotated(mnist_root, seed=1), _rotated(mnist_root, seed=1), _rotated(mnist_root, seed=2)
    assert torch.equal(angles(a, 0), angles(b, 0))
    assert not torch.equal(angles(a, 0), angles(c, 0))
    assert not torch.equal(angles(a, 0), angles(a, 1))
    val = torch.cat([batch["angle"] for batch in a.val_dataloader()])
    assert torch.equal(val, torch.cat([batch["angle"] for batch in a.val_dataloader()])) and val.any()


def _bar(half: bool = False) -> Tensor:
    """(1, 1, 32, 32): a horizontal bar, 2 px thick, through the centre; ``half`` keeps its right arm."""
    image = torch.zeros(1, 1, 32, 32)
    image[..., 15:17, 16 if half else 4:28] = 1.0
    return image


def _mass_near(image: Tensor, on_line: Tensor) -> float:
    """Fraction of the image's mass within 1.5 px of the line (mask of pixels)."""
    return float((image[0, 0] * on_line).sum() / image.sum())


def test_rotate_turns_a_bar_by_the_stated_angle() -> None:
    rows, cols = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(32.0) - 15.5, indexing="ij")
    vertical = torch.rot90(_bar(), 1, dims=(-2, -1))
    assert torch.equal(rotate(_bar(), torch.tensor([90.0])), vertical)
    # Counter-clockwise on screen: +45° puts the bar on the rising diagonal, where row = -col.
    rising, falling = (rows + cols).abs() < 1.5 * 2**0.5, (rows - cols).abs() < 1.5 * 2**0.5
    turned = rotate(_bar(), torch.tensor([45.0]))
    assert _mass_near(turned, rising) > 0.95 and _mass_near(turned, falling) < 0.3
    # Direction: the right arm turned by +30° points up-right (rows above the centre).
    arm = rotate(_bar(half=True), torch.tensor([30.0]))[0, 0]
    assert (arm * (rows < 0) * (cols > 0)).sum() > 0.9 * arm.sum()
    direction = torch.atan2(-(arm * rows).sum(), (arm * cols).sum()).rad2deg()
    assert abs(float(direction) - 30.0) < 3.0


def test_rotate_is_batched_one_angle_per_image() -> None:
    images = torch.cat([_bar(), _bar(), _bar()])
    out = rotate(images, torch.tensor([0.0, 90.0, 45.0]))
    assert torch.equal(out[0], images[0]) and torch.equal(out[1:2], rotate(_bar(), torch.tensor([90.0])))
    assert torch.equal(out[2:], rotate(_bar(), torch.tensor([45.0])))
    with pytest.raises(ValueError):
        rotate(images, torch.zeros(2))

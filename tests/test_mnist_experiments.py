"""Rotated and natural MNIST experiments on tiny generated IDX files: the configs compose and build, both
experiments pass a ``fast_dev_run`` through ``train.py``, missing data stops with a useful message, and every
image metric lands in its range and can fail. No network, no files outside the repository and tmp_path."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_train, documented_metrics, write_mnist_fixture
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from torch import Tensor, nn

from vaells.app.builders import build_datamodule, build_model
from vaells.data.mnist import MNIST_RAW_FILES, MNISTDataModule, RotatedMNISTDataModule, rotate
from vaells.distributions import TransportPosterior
from vaells.evaluation.classifier import cached_classifier, predict, train_classifier
from vaells.evaluation.common import pearson_matrix, spearman
from vaells.evaluation.comparison import comparative_metrics, rotation_share_matched
from vaells.evaluation.preservation import class_preservation, class_preservation_ceiling
from vaells.evaluation.rotation import coefficient_span, rotation_flow_fit, rotation_metrics, rotation_span
from vaells.evaluation.summary import mnist_metrics
from vaells.figures.images import (
    build_image_figures,
    extrapolated_paths,
    operator_paths,
    posterior_ring,
    save_matched_ring,
)
from vaells.training.figures import LatentFigures, save_figures
from vaells.transport import TransportOperator

NUM_TRAIN_FILE, NUM_TEST_FILE = 120, 40  # 100 train / 20 val: 10 per class, enough for 8 anchors per class
# One off-centre square per class: easy to classify, and no pattern looks the same after a rotation.
SQUARES = [(4, 4), (4, 12), (4, 19), (12, 4), (12, 19), (19, 4), (19, 12), (19, 19), (8, 15), (15, 8)]


# -- fixtures ----------------------------------------------------------------------------------------------
def _class_digits(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """n images 28x28 uint8: faint noise and a bright 5x5 square at the class's place, jittered by 1 pixel;
    labels 0..9 in turn (not sorted, so the release's head/tail split applies)."""
    labels = torch.arange(n) % 10
    images = (torch.rand(n, 28, 28, generator=gen) * 40).to(torch.uint8)
    jitter = torch.randint(-1, 2, (n, 2), generator=gen)
    for i in range(n):
        r, c = (torch.tensor(SQUARES[int(labels[i])]) + jitter[i]).tolist()
        images[i, r:r + 5, c:c + 5] = 255
    return images, labels.to(torch.uint8)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mnist_fixture(tmp_path_factory.mktemp("mnist"), _class_digits, NUM_TRAIN_FILE, NUM_TEST_FILE)


def _train(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def cli_runs(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str, Path]]:
    """Four real ``python train.py`` runs at once (each pays ~10 s of imports): a fast_dev_run of VAELLS per
    experiment, one multirun with a fast_dev_run of every baseline on both experiments, and rotated MNIST pointed
    at an empty data root."""
    base = tmp_path_factory.mktemp("runs")
    empty = tmp_path_factory.mktemp("no_mnist")
    common = ["data.download=false", "~callbacks.latent_figures"]
    jobs = {}
    for experiment in ("rotated_mnist", "natural_mnist"):
        out = base / experiment
        jobs[experiment] = (_train(f"experiment={experiment}", f"data.root={mnist_root}", *common,
                                   "trainer.fast_dev_run=true", f"hydra.run.dir={out}", cwd=base), out)
    out = base / "baselines"
    # ++: a multirun checks its overrides against the default data (the swiss roll) before it sweeps
    jobs["baselines"] = (_train("-m", "experiment=rotated_mnist,natural_mnist", "model=vae,vampprior,svae",
                                f"++data.root={mnist_root}", "++data.download=false", "~callbacks.latent_figures",
                                "trainer.fast_dev_run=true", f"hydra.sweep.dir={out}", cwd=base), out)
    out = base / "missing"
    jobs["missing"] = (_train("experiment=rotated_mnist", f"data.root={empty}", *common, f"hydra.run.dir={out}",
                              cwd=base), empty)
    results = {}
    for name, (proc, path) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, path)
    return results


def _built(experiment: str, root: Path, tmp_path: Path):
    cfg = compose_train([f"experiment={experiment}", f"data.root={root}", "data.download=false"], tmp_path)
    dm = build_datamodule(cfg)
    return cfg, dm, build_model(cfg, dm)


# -- configs and the app -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("experiment", "d", "m", "n_a", "size", "dm_class"),
    [("rotated_mnist", 10, 1, 5, 32, RotatedMNISTDataModule), ("natural_mnist", 6, 8, 8, 28, MNISTDataModule)],
)
def test_experiment_composes_and_builds(experiment, d, m, n_a, size, dm_class, mnist_root, tmp_path) -> None:
    cfg, dm, model = _built(experiment, mnist_root, tmp_path)
    assert (cfg.model.latent_dim, cfg.model.num_operators, cfg.data.anchors_per_class) == (d, m, n_a)
    assert cfg.model.latent_scale == 10.0 and cfg.model.weights.recon == 1.0 and cfg.model.closest_anchor
    schedule = cfg.model.schedule
    assert schedule.alternate and (schedule.net_steps, schedule.psi_steps) == (20, 60)
    assert schedule.net_prior_scale == schedule.psi_recon_scale == 1e-4
    assert isinstance(dm, dm_class) and dm.input_shape == (1, size, size)
    x = torch.zeros(2, *dm.input_shape)
    assert model.decode(model.encode(x)).shape == x.shape
    assert model.transport.num_operators == m and model.transport.latent_dim == d
    if experiment == "natural_mnist":  # class-matched anchors, learned in pixel space
        assert model.anchor_inputs.shape == (10 * n_a, 1, 28, 28) and model.anchor_inputs.requires_grad
    else:  # per-sample anchors travel with the batch
        assert model.anchor_inputs is None and next(iter(dm.train_dataloader()))["anchors"].shape[1] == n_a


@pytest.mark.e2e
@pytest.mark.parametrize("experiment", ["rotated_mnist", "natural_mnist"])
def test_fast_dev_run(experiment: str, cli_runs) -> None:
    code, out, err, run_dir = cli_runs[experiment]
    assert code == 0, err[-3000:]
    assert f"Run directory: {run_dir}" in out
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # The warm-up is skipped, so the one batch reaches the coefficient solvers and the anchor prior, whose loss
    # terms it logs; no checkpoint is written, and none is offered for evaluation.
    log = (run_dir / "train.log").read_text()
    assert "fast_dev_run: the warm-up of" in log and "batch 0: VAELLS phase" in log
    last_batch = next(line for line in log.splitlines() if "last training batch:" in line)
    assert "train/prior=" in last_batch and "train/post_transport=" in last_batch, last_batch
    assert "No checkpoint was written" in out and "Evaluate with" not in out


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["rotated_mnist", "natural_mnist", "baselines", "missing"])
def test_output_is_plain_lines_without_library_chatter(name: str, cli_runs) -> None:
    """Piped output (not a terminal): progress as lines, no carriage returns, and neither Lightning's litlogger
    advertisement nor torch's LeafSpec deprecation warning from Lightning's pytree helper."""
    _, out, err, _ = cli_runs[name]
    assert "\r" not in out + err
    assert "litlogger" not in out + err and "LeafSpec" not in out + err
    if name != "missing":
        assert re.search(r"epoch 1/1 batch 1/1 .*train/loss=", out), out[-2000:]


@pytest.mark.e2e
def test_every_baseline_fast_dev_runs_on_both_experiments(cli_runs) -> None:
    code, out, err, sweep = cli_runs["baselines"]
    assert code == 0, err[-3000:]
    jobs = sorted(sweep.glob("[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == 6 and out.count("Run directory:") == 6
    for job in jobs:  # each job's own config: the experiment's networks with the baseline's head
        saved = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert saved.model.encoder._target_ == "vaells.networks.ConvEncoder"
        assert saved.model.encoder.image_size == (32 if saved.data._target_.endswith("RotatedMNISTDataModule") else 28)


@pytest.mark.e2e
def test_missing_data_names_the_path_and_data_root(cli_runs) -> None:
    code, out, err, empty = cli_runs["missing"]
    assert code != 0
    assert str(empty / "MNIST" / "raw") in err
    assert "data.root" in err and all(name in err for name in MNIST_RAW_FILES)
    assert "Run directory" not in out  # it stopped before training
    # One message, as for a bad tensor file, and no run folder left behind.
    assert "Traceback" not in err and err.count("MNIST not found") == 1, err
    removed = re.search(r"removed its folder (\S+)\)", err)
    assert removed and removed.group(1).endswith("missing") and not Path(removed.group(1)).exists(), err


# -- rotation metrics ------------------------------------------------------------------------------------
class _TransportSampling(nn.Module):
    """The VAELLS posterior samples of the model interface, for the oracles below."""

    def posterior_samples(self, x: Tensor, num_samples: int, spread: float = 1.0) -> Tensor:
        q = TransportPosterior(self.encode(x), self.transport, spread * self.coeff_scale, self.noise_std)
        return q.rsample(torch.Size([num_samples])).transpose(0, 1)


class RotationOracle(_TransportSampling):
    """A perfect rotated-MNIST model for a few known digits: it encodes an image by lookup as
    (cos theta, sin theta, one-hot digit), decodes by rotating the stored digit, and its single operator
    turns the (cos, sin) plane (``rotating``) or, as a failing control, mixes the digit codes instead."""

    def __init__(self, digits: Tensor, rotating: bool, omega: float = 0.05) -> None:
        super().__init__()
        k = digits.shape[0]
        self.digits = digits
        self.table = rotate(digits.repeat_interleave(360, 0), torch.arange(360.0).repeat(k))  # (K * 360, 1, H, W)
        self.transport = TransportOperator(2 + k, 1, init_std=0.0)
        i, j = (0, 1) if rotating else (2, 3)
        with torch.no_grad():
            self.transport.psi[0, i, j], self.transport.psi[0, j, i] = -omega, omega
        self.coeff_scale, self.noise_std = 1.0, 0.0

    def encode(self, x: Tensor) -> Tensor:
        best = pearson_matrix(x.float(), self.table).argmax(-1)  # (N,)
        theta = torch.deg2rad((best % 360).double())
        code = nn.functional.one_hot(best // 360, self.digits.shape[0]).double()
        return torch.cat([theta.cos()[:, None], theta.sin()[:, None], code], -1)

    def decode(self, z: Tensor) -> Tensor:
        theta = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0])).float()
        return rotate(self.digits[z[:, 2:].argmax(-1)], theta)


def _upright(root: Path, n: int) -> Tensor:
    dm = RotatedMNISTDataModule(root=str(root), download=False)
    dm.setup("test")
    return torch.stack([dm.test_set[i]["digit"] for i in range(n)])


def test_rotation_metrics_pass_for_a_rotation_and_fail_without_one(mnist_root: Path) -> None:
    digits = _upright(mnist_root, 4)
    good = rotation_metrics(RotationOracle(digits, rotating=True), digits, num_frames=121)
    assert good["rotation_ceiling"] > 0.99
    assert good["rotation_match"] >= 0.95 * good["rotation_ceiling"]
    assert good["rotation_order"] > 0.95
    assert math.isclose(good["rotation_coeff_span"], math.radians(90) / 0.05)  # the path turns by +-90 degrees
    bad = rotation_metrics(RotationOracle(digits, rotating=False), digits, num_frames=121)
    assert bad["rotation_ceiling"] > 0.99  # the same perfect autoencoder ...
    assert bad["rotation_match"] < 0.8 * bad["rotation_ceiling"]  # ... but its operator does not rotate
    assert bad["rotation_order"] < 0.5
    assert set(good) <= documented_metrics()  # docs/metrics.md, "Every key"


class ShearOracle(RotationOracle):
    """RotationOracle's perfect autoencoder with a shear coordinate: z = (cos, sin, shear, one-hot), decoded by
    rotating the stored digit and then shearing it horizontally. Its one operator moves only the shear (the
    nilpotent generator adds omega c to the shear through the one-hot's constant 1): a smooth image path that
    changes the digit steadily, but is not a rotation."""

    def __init__(self, digits: Tensor, omega: float = 0.02) -> None:
        super().__init__(digits, rotating=True)
        k = digits.shape[0]
        self.transport = TransportOperator(3 + k, 1, init_std=0.0)
        with torch.no_grad():
            self.transport.psi[0, 2, 3:] = omega

    def encode(self, x: Tensor) -> Tensor:
        z = super().encode(x)
        return torch.cat([z[:, :2], torch.zeros_like(z[:, :1]), z[:, 2:]], -1)

    def decode(self, z: Tensor) -> Tensor:
        upright = super().decode(torch.cat([z[:, :2], z[:, 3:]], -1))
        shear = z[:, 2].float()
        theta = torch.zeros(z.shape[0], 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 1] = shear
        grid = nn.functional.affine_grid(theta, list(upright.shape), align_corners=False)
        return nn.functional.grid_sample(upright, grid, align_corners=False)


def test_a_shear_path_scores_below_a_rotation(mnist_root: Path) -> None:
    digits = _upright(mnist_root, 4)
    rotation = rotation_metrics(RotationOracle(digits, rotating=True), digits, num_frames=61)
    shear = rotation_metrics(ShearOracle(digits), digits, num_frames=61, coeff_span=0.8 / 0.02)  # shear +-0.8
    assert shear["rotation_ceiling"] > 0.99  # a perfect autoencoder, as the rotation's
    assert shear["rotation_match"] < rotation["rotation_match"] - 0.05
    assert shear["rotation_order"] < rotation["rotation_order"] - 0.1


class ScrambledOracle(RotationOracle):
    """RotationOracle's perfect autoencoder, but its latent angle is a fixed random permutation of the image's
    angle (1-degree bins), undone by the decoder: reconstructions stay exact, the loop is no longer smooth."""

    def __init__(self, digits: Tensor) -> None:
        super().__init__(digits, rotating=True)
        self.perm = torch.randperm(360, generator=torch.Generator().manual_seed(0))
        self.inverse = torch.argsort(self.perm)

    def encode(self, x: Tensor) -> Tensor:
        z = super().encode(x)
        degrees = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0])).round().long() % 360
        theta = torch.deg2rad(self.perm[degrees].double())
        return torch.cat([theta.cos()[:, None], theta.sin()[:, None], z[:, 2:]], -1)

    def decode(self, z: Tensor) -> Tensor:
        degrees = torch.rad2deg(torch.atan2(z[:, 1], z[:, 0])).round().long() % 360
        theta = torch.deg2rad(self.inverse[degrees].double())
        return super().decode(torch.cat([theta.cos()[:, None], theta.sin()[:, None], z[:, 2:]], -1))


def test_rotation_flow_fit_follows_a_smooth_loop_and_fails_on_a_scrambled_one(mnist_root: Path) -> None:
    digits = _upright(mnist_root, 4)
    smooth = rotation_flow_fit(RotationOracle(digits, rotating=False), digits, num_frames=121)
    # The oracle's loop is a circle in (z_0, z_1): one rotation field fits it (central differences shrink the
    # tangent by sin(10 deg) / (10 deg), which the field's frequency absorbs), whatever Psi is.
    assert smooth["rotation_flow_residual"] < 1e-3
    assert smooth["rotation_flow_order"] > 0.95
    assert smooth["rotation_flow_match"] > 0.9
    scrambled = ScrambledOracle(digits)
    ceiling = rotation_metrics(scrambled, digits)["rotation_ceiling"]
    assert ceiling > 0.99  # the same perfect reconstructions ...
    bad = rotation_flow_fit(scrambled, digits, num_frames=121)
    assert bad["rotation_flow_residual"] > 0.5  # ... but no linear field follows the loop
    # Every digit starts from the same latent angle, so the frames' angles are one scrambled sequence: the order is
    # one random draw (0.56 with this permutation), far from the smooth loop's 1.
    assert bad["rotation_flow_order"] < 0.7
    assert set(smooth) <= documented_metrics()
    with pytest.raises(ValueError, match="loop_angles"):
        rotation_flow_fit(scrambled, digits, loop_angles=4)


def test_rotation_share_matched_of_a_rotating_model_and_of_an_untrained_baseline(mnist_root: Path,
                                                                                  tmp_path: Path) -> None:
    digits = _upright(mnist_root, 4)
    good = rotation_share_matched(RotationOracle(digits, rotating=True), digits, target=0.01, num_samples=4)
    assert good["rotation_share_matched"] > 0.8 and good["matched_variation"] == pytest.approx(0.01, rel=0.02)
    cfg = compose_train(["experiment=rotated_mnist", "model=svae", f"data.root={mnist_root}", "data.download=false"],
                        tmp_path)
    dm = build_datamodule(cfg)
    metrics = comparative_metrics(build_model(cfg, dm), dm, num_digits=6)
    assert set(metrics) == {"rotation_share_matched", "matched_spread", "matched_variation"}
    assert 0.0 <= metrics["rotation_share_matched"] <= 1.0
    assert set(metrics) <= documented_metrics()


def test_untrained_model_scores_low_on_rotation(mnist_root: Path, tmp_path: Path) -> None:
    _, dm, model = _built("rotated_mnist", mnist_root, tmp_path)
    metrics = mnist_metrics(model, dm, num_digits=8)
    assert set(metrics) >= {"rotation_match", "rotation_ceiling", "rotation_order"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert -1 <= metrics["rotation_match"] <= 1 and -1 <= metrics["rotation_ceiling"] <= 1
    assert 0 <= metrics["rotation_order"] < 0.9


def test_coefficient_span_and_spearman() -> None:
    psi = torch.zeros(4, 4, dtype=torch.float64)
    psi[0, 1], psi[1, 0] = -0.02, 0.02  # slow plane, where the points move
    psi[2, 3], psi[3, 2] = -0.5, 0.5  # fast plane, which the points barely occupy
    mu = torch.tensor([[1.0, 0.0, 1e-4, 0.0], [0.0, 1.0, 0.0, 1e-4]], dtype=torch.float64)
    assert math.isclose(coefficient_span(psi, mu), math.pi / 0.02)
    assert coefficient_span(torch.zeros(4, 4), mu) == 1.0
    assert spearman(np.arange(5), np.array([0, 2, 2, 3, 9])) > 0.9
    assert spearman(np.arange(5), np.zeros(5)) == 0.0  # constant: no order at all


def test_rotation_span_turns_the_fundamental_when_a_harmonic_moves_faster() -> None:
    # An image rotation's planes: the fundamental w and its 2nd and 3rd harmonics, the 3rd the fastest at these
    # encodings (as in trained runs), plus a slow plane of init noise that the points occupy but barely turn in.
    w = 0.03
    psi = torch.zeros(8, 8, dtype=torch.float64)
    for plane, freq in enumerate([w, 2 * w, 3 * w, 0.001]):
        i, j = 2 * plane, 2 * plane + 1
        psi[i, j], psi[j, i] = -freq, freq
    mu = torch.tensor([[0.4, 0.0, 0.6, 0.0, 0.6, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert math.isclose(coefficient_span(psi, mu), math.pi / (3 * w))  # the fastest plane: a third of the turn
    assert math.isclose(rotation_span(psi, mu, 90.0), math.radians(90) / w)  # the fundamental: +-90 degrees
    # Nor a slow plane that the points occupy with a large amplitude, so that its speed passes the occupancy test
    # (as in trained runs): below the fastest plane's 1 / (d / 2 + 1) it cannot be a fundamental.
    wide = mu.clone()
    wide[0, 6] = 30.0  # speed 0.03, above the fundamental's 0.012
    assert math.isclose(rotation_span(psi, wide, 90.0), math.radians(90) / w)
    # A plane the points do not occupy is not taken for the fundamental, however slow.
    mu[0, 0] = 0.0
    assert math.isclose(rotation_span(psi, mu, 90.0), math.radians(90) / (2 * w))
    assert rotation_span(torch.zeros(8, 8), mu, 90.0) == coefficient_span(torch.zeros(8, 8), mu) == 1.0


# -- class metrics ---------------------------------------------------------------------------------------
def _split(root: Path) -> tuple[MNISTDataModule, Tensor, Tensor, Tensor, Tensor]:
    from vaells.evaluation.common import dataset_tensors

    dm = MNISTDataModule(root=str(root), download=False)
    dm.setup("fit")
    return (dm, *dataset_tensors(dm.train_set), *dataset_tensors(dm.test_set))


class ClassOracle(_TransportSampling):
    """Encodes a digit as the one-hot code of its nearest class template and decodes the template; its operator
    is zero (posterior samples keep the class) or a strong cyclic mixing of the codes (a failing control)."""

    def __init__(self, templates: Tensor, mixing: float) -> None:
        super().__init__()
        self.templates = templates
        shift = torch.roll(torch.eye(10, dtype=torch.float64), 1, dims=0)
        self.transport = TransportOperator(10, 1, init_std=0.0)
        with torch.no_grad():
            self.transport.psi[0] = mixing * (shift - shift.T)
        self.coeff_scale, self.noise_std = 1.0, 1e-3

    def encode(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(pearson_matrix(x, self.templates).argmax(-1), 10).double()

    def decode(self, z: Tensor) -> Tensor:
        return self.templates[z.argmax(-1)]


def test_classifier_learns_real_labels_and_not_random_ones(mnist_root: Path) -> None:
    _, x_train, y_train, x_test, y_test = _split(mnist_root)
    clf = train_classifier(x_train, y_train, steps=120, seed=0)
    assert float((predict(clf, x_test) == y_test).float().mean()) >= 0.9
    shuffled = y_train[torch.randperm(y_train.numel(), generator=torch.Generator().manual_seed(1))]
    noise = train_classifier(x_train, shuffled, steps=120, seed=0)
    assert float((predict(noise, x_test) == y_test).float().mean()) <= 0.4


def test_class_preservation_passes_and_fails(mnist_root: Path, tmp_path: Path) -> None:
    _, x_train, y_train, x_test, y_test = _split(mnist_root)
    clf = cached_classifier(x_train, y_train, steps=120, seed=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("digit_cnn_*.pt"))) == 1
    again = cached_classifier(x_train, y_train, steps=120, seed=0, cache_dir=tmp_path)  # loaded, not retrained
    assert torch.equal(predict(clf, x_test), predict(again, x_test))
    templates = torch.stack([x_train[y_train == k].mean(0) for k in range(10)])
    keep = class_preservation(ClassOracle(templates, 0.0), clf, x_test, y_test)
    mix = class_preservation(ClassOracle(templates, 3.0), clf, x_test, y_test)
    assert keep >= 0.9 and mix <= 0.6
    # The ceiling ignores the operator (both oracles reconstruct alike) and bounds what samples keep.
    ceiling = class_preservation_ceiling(ClassOracle(templates, 3.0), clf, x_test, y_test)
    assert ceiling == class_preservation_ceiling(ClassOracle(templates, 0.0), clf, x_test, y_test)
    assert ceiling >= 0.9 and mix < ceiling


def test_mnist_metrics_on_an_untrained_natural_model(mnist_root: Path, tmp_path: Path) -> None:
    _, dm, model = _built("natural_mnist", mnist_root, tmp_path)
    metrics = mnist_metrics(model, dm, num_digits=20, classifier_steps=60, num_samples=3)
    matched = {"class_preservation_matched", "matched_spread", "matched_variation"}
    assert set(metrics) == {"classifier_accuracy", "class_preservation", "class_preservation_ceiling", *matched,
                            *(f"{k}_init_psi" for k in matched)}
    fractions = ("classifier_accuracy", "class_preservation", "class_preservation_ceiling",
                 "class_preservation_matched", "class_preservation_matched_init_psi")
    assert all(0.0 <= metrics[k] <= 1.0 for k in fractions)
    # Untrained, Psi still is its random start: the two matched searches are the same computation.
    for k in matched:
        assert metrics[k] == metrics[f"{k}_init_psi"]
    assert set(metrics) <= documented_metrics()
    assert metrics["matched_spread"] > 0 and math.isfinite(metrics["matched_variation"])
    assert mnist_metrics(model, object()) == {}  # other data: nothing to add


def test_mnist_metrics_of_a_baseline_through_the_interface(mnist_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=natural_mnist", "model=vae", f"data.root={mnist_root}", "data.download=false"],
                        tmp_path)
    dm = build_datamodule(cfg)
    metrics = mnist_metrics(build_model(cfg, dm), dm, num_digits=20, classifier_steps=60, num_samples=3)
    assert set(metrics) == {"classifier_accuracy", "class_preservation", "class_preservation_ceiling",
                            "class_preservation_matched", "matched_spread", "matched_variation"}
    cfg = compose_train(["experiment=rotated_mnist", "model=svae", f"data.root={mnist_root}", "data.download=false"],
                        tmp_path)
    dm = build_datamodule(cfg)
    metrics = mnist_metrics(build_model(cfg, dm), dm, num_digits=4)  # rotation metrics follow operators ...
    assert set(metrics) == {"rotation_flow_order", "rotation_flow_match", "rotation_flow_residual"}  # ... this not


@pytest.mark.parametrize("name", ["vaells", "vampprior"])
def test_matched_ring_of_any_model(name: str, mnist_root: Path, tmp_path: Path) -> None:
    cfg = compose_train(["experiment=natural_mnist", f"model={name}", f"data.root={mnist_root}",
                         "data.download=false"], tmp_path)
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    path = save_matched_ring(model, dm, {"matched_spread": 2.0, "matched_variation": 0.01}, tmp_path / "figures",
                             num_digits=3)
    assert path == tmp_path / "figures" / "matched_ring.png" and path.stat().st_size > 0
    assert save_matched_ring(model, dm, {"mse": 0.1}, tmp_path / "none") is None  # no images, no ring
    assert not (tmp_path / "none").exists()


# -- figures ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("experiment", "names"), [
    ("rotated_mnist", {"posterior_ring", "extrapolated_paths"}),
    ("natural_mnist", {"posterior_ring", "extrapolated_paths", "operator_paths"}),
])
def test_image_figures(experiment: str, names: set[str], mnist_root: Path, tmp_path: Path) -> None:
    _, dm, model = _built(experiment, mnist_root, tmp_path)
    model.train()
    psi = model.transport.psi.detach().clone()
    figs = build_image_figures(model, dm, num_digits=3)
    assert set(figs) == names and all(isinstance(f, Figure) for f in figs.values())
    assert model.training and torch.equal(psi, model.transport.psi)  # mode restored, nothing changed
    paths = save_figures(figs, tmp_path / "figures")
    assert all(p.stat().st_size > 0 for p in paths)


def test_ring_spread_reaches_the_posterior_ring(mnist_root: Path, tmp_path: Path) -> None:
    _, dm, model = _built("natural_mnist", mnist_root, tmp_path)
    overrides = ["experiment=natural_mnist", f"data.root={mnist_root}", "data.download=false"]
    cfg = compose_train(overrides, tmp_path, latent_figures=True)
    assert cfg.callbacks.latent_figures.ring_spread == 1.0  # the experiment's own choice
    figs = build_image_figures(model, dm, num_digits=2, ring_spread=2.5, operator_path_range=7.0)
    assert "b = 2.5" in figs["posterior_ring"].get_suptitle()
    row_labels = [t.get_text() for t in figs["operator_paths"].axes[0].get_yticklabels()]
    assert len(row_labels) == 2 * 8 and all(label.endswith("|c| <= 7") for label in row_labels)
    automatic = build_image_figures(model, dm, num_digits=2)["posterior_ring"].get_suptitle()
    assert "b = 2.5" not in automatic
    with pytest.raises(ValueError, match="ring_spread"):
        LatentFigures(ring_spread=0.0)
    with pytest.raises(ValueError, match="operator_path_range"):
        LatentFigures(operator_path_range=-1.0)


def test_figure_builders_take_explicit_settings(mnist_root: Path) -> None:
    digits = _upright(mnist_root, 2)
    oracle = RotationOracle(digits, rotating=True)
    assert isinstance(posterior_ring(oracle, digits, num_samples=5, spread=2.0), Figure)
    assert isinstance(extrapolated_paths(oracle, digits[0], coeff_range=(-10.0, 10.0), steps=4), Figure)
    assert isinstance(operator_paths(oracle, digits[:1], steps=5), Figure)
    with pytest.raises(ValueError, match="num_samples"):
        posterior_ring(oracle, digits, num_samples=0)


class _LoaderOnlyData:
    """An image DataModule without ``test_set``: figures take their digits from the test loader."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def setup(self, stage: str) -> None:
        pass

    def test_dataloader(self):
        return [{"x": self.x, "label": torch.arange(self.x.shape[0]) % 2}]


def test_figures_from_a_datamodule_without_a_test_set(mnist_root: Path) -> None:
    digits = _upright(mnist_root, 4)
    figs = build_image_figures(RotationOracle(digits, rotating=True), _LoaderOnlyData(digits), num_digits=3)
    assert set(figs) == {"posterior_ring", "extrapolated_paths"}

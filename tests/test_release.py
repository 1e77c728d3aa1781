"""Importing the authors' trained models (vaells.release), checked against an independent computation of the
paper's equations on release-layout fixtures that the tests build: the release's files are not in the repository."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import torch
from torch import nn

from vaells import load
from vaells.objectives import LossWeights
from vaells.release import main as release_main
from vaells.release import read_release, release_psi

D, HIDDEN, LATENT = 20, 512, 2


class ReleaseMLPEncoder(nn.Module):
    """The release's fullyConnectedModel.Encoder layout: its parameter names are what the import must map."""

    def __init__(self) -> None:
        super().__init__()
        self.model_enc = nn.Sequential(nn.Linear(D, HIDDEN), nn.ReLU())
        self.fc_mean = nn.Linear(HIDDEN, LATENT)

    def forward(self, x):
        return self.fc_mean(self.model_enc(x))


class ReleaseMLPDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, D))

    def forward(self, z):
        return self.model(z)


class ReleaseConvEncoder(nn.Module):
    """The release's covNetModel.Encoder layout."""

    def __init__(self, z_dim: int = 6) -> None:
        super().__init__()
        self.model_enc = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),
                                       nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(64, 64, 4, 1, 0), nn.ReLU())
        self.fc_mean = nn.Linear(64 * 7 * 7, z_dim)

    def forward(self, x):
        return self.fc_mean(self.model_enc(x).flatten(1))


class ReleaseConvDecoder(nn.Module):
    def __init__(self, z_dim: int = 6) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(z_dim, 64 * 7 * 7), nn.ReLU())
        self.model = nn.Sequential(nn.ConvTranspose2d(64, 64, 4, 1, 1), nn.ReLU(), nn.ConvTranspose2d(64, 64, 4, 2, 2),
                                   nn.ReLU(), nn.ConvTranspose2d(64, 1, 4, 2, 1), nn.Sigmoid())

    def forward(self, z):
        return self.model(self.fc(z).view(-1, 64, 7, 7))


def circles_release(folder, *, num_operators=2, scale=1.0, anchors_in_checkpoint=False):
    """A circles model in the release's files: the checkpoint (legacy pickle, Psi as (d*d, M) column-major
    columns), its training log (Psi_new, anchors, a_mu_scale_np) and its (D, 2) data map."""
    torch.manual_seed(3)
    encoder, decoder = ReleaseMLPEncoder(), ReleaseMLPDecoder()
    psi = (0.3 * torch.randn(LATENT * LATENT, num_operators, dtype=torch.float64)).requires_grad_()
    mapping = np.random.default_rng(0).uniform(-1, 1, (D, LATENT))
    angles = np.tile(np.arange(3) * 2 * np.pi / 3, 2)
    radius = np.repeat([0.5, 1.0], 3)
    anchors = torch.tensor((radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)) @ mapping.T).float()
    release = {"model_state_dict_encoder": encoder.state_dict(), "model_state_dict_decoder": decoder.state_dict(),
               "Psi": psi, "step": 3900, "epoch": 3900, "loss": torch.tensor([-1.0])}
    if anchors_in_checkpoint:
        release["anchors"] = anchors.clone().requires_grad_()
    checkpoint = folder / "network_batch30_zdim2.pt"
    torch.save(release, checkpoint, _use_new_zipfile_serialization=False)
    with torch.no_grad():
        scaled = (encoder(anchors) / scale).double().numpy()
    scipy.io.savemat(folder / "spreadInferenceTest.mat", {"Psi_new": psi.detach().numpy(), "anchors": anchors.numpy(),
                                                           "a_mu_scale_np": scaled})
    map_file = folder / "mapMat_circleHighDim_nonLinear_z2_x20.mat"
    scipy.io.savemat(map_file, {"mapMat": mapping})
    return checkpoint, map_file, encoder, decoder, psi.detach().numpy(), anchors


def test_release_psi_reads_each_column_in_column_major_order():
    columns = torch.randn(9, 4, dtype=torch.float64)
    c = torch.randn(4, dtype=torch.float64)
    ours = torch.einsum("m,mij->ij", c, release_psi(columns))
    # The release: A = reshape(Psi @ c, (N, N), order="F").
    theirs = np.reshape(columns.numpy() @ c.numpy(), (3, 3), order="F")
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-12, atol=1e-12)


def test_release_psi_refuses_a_dictionary_that_is_not_square():
    with pytest.raises(ValueError, match="not a square"):
        release_psi(torch.zeros(5, 2))


def test_an_imported_model_computes_the_papers_terms(tmp_path):
    checkpoint, map_file, encoder, decoder, psi_columns, anchors = circles_release(tmp_path)
    out = tmp_path / "run"
    assert release_main(["import", str(checkpoint), "--experiment", "concentric_circles", "--map", str(map_file),
                         "--out", str(out)]) == 0
    info = json.loads((out / "release.json").read_text())
    assert info["psi_matches_log"] and info["latent_scale"] == 1.0 and info["step"] == 3900

    run = load(out)
    model = run.model
    assert run.config.data.projection_file == str(map_file.resolve())
    np.testing.assert_allclose(model.transport.psi.detach().numpy(), release_psi(torch.tensor(psi_columns)).numpy())
    assert model.anchor_labels.tolist() == [0, 0, 0, 1, 1, 1]

    # A fixed batch: four noisy circle points of each class, drawn on the release's map.
    rng = np.random.default_rng(1)
    labels = torch.tensor([0, 1, 0, 1])
    angle = rng.uniform(0, 2 * np.pi, 4)
    radius = np.where(labels.numpy() == 0, 0.5, 1.0)
    mapping = scipy.io.loadmat(map_file)["mapMat"]
    x = torch.tensor((radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)) @ mapping.T
                     + 0.01 * rng.standard_normal((4, D))).float()
    torch.manual_seed(0)
    weights = LossWeights(recon=0.01, post_transport=1.0, post_l1=1.0, prior_transport=1.0, prior_l1=0.01,
                          dictionary=0.01)
    with torch.no_grad():
        out_terms = model.forward_terms({"x": x, "label": labels}, weights)

    # The same terms from the paper's equations, with the release's networks and scipy's expm, at the inferred c.
    def transport(c, z0):  # eq. 1 with the release's column-major dictionary
        return scipy.linalg.expm(np.reshape(psi_columns @ c, (LATENT, LATENT), order="F")) @ z0

    with torch.no_grad():
        mu = encoder(x).double().numpy()
        a = encoder(anchors).double().numpy().reshape(2, 3, LATENT)
    z, post_c, prior_c = (t.numpy() for t in (out_terms.z, out_terms.post.c, out_terms.prior.c))
    np.testing.assert_allclose(out_terms.mu.numpy(), mu, rtol=1e-5, atol=1e-6)
    post = np.mean([0.5 * np.sum((z[b] - transport(post_c[b], mu[b])) ** 2) for b in range(4)])
    assert float(out_terms.terms["post_transport"]) == pytest.approx(-post, rel=1e-6, abs=1e-10)
    prior = []
    for b in range(4):  # eq. 8: -log (1/N_a) sum_i exp(-zeta_4/2 ||z - T(c_i) a_i||^2 - zeta_5 ||c_i||_1)
        energies = [0.5 * np.sum((z[b] - transport(prior_c[b, i], a[labels[b], i])) ** 2)
                    + 0.01 * np.abs(prior_c[b, i]).sum() for i in range(3)]
        prior.append(-np.log(np.mean(np.exp(-np.array(energies)))))
    assert float(out_terms.terms["prior"]) == pytest.approx(np.mean(prior), rel=1e-6)
    with torch.no_grad():
        x_hat = decoder(torch.tensor(z).float()).numpy()
    recon = 0.01 * np.mean(0.5 * np.sum((x.numpy() - x_hat) ** 2, 1))
    assert float(out_terms.terms["recon"]) == pytest.approx(recon, rel=1e-5)


def test_the_latent_scale_is_read_from_the_training_log(tmp_path):
    checkpoint, *_ = circles_release(tmp_path, scale=10.0, anchors_in_checkpoint=True)
    model = read_release(checkpoint, "concentric_circles")
    assert model.latent_scale == 10.0 and model.anchors.shape == (6, D) and model.step == 3900


def test_an_image_model_maps_onto_the_conv_networks(tmp_path):
    torch.manual_seed(0)
    encoder, decoder = ReleaseConvEncoder(), ReleaseConvDecoder()
    anchors = torch.rand(20, 1, 28, 28)
    path = tmp_path / "network_batch32_zdim6.pt"
    torch.save({"model_state_dict_encoder": encoder.state_dict(), "model_state_dict_decoder": decoder.state_dict(),
                "Psi": torch.randn(36, 4, dtype=torch.float64), "anchors": anchors, "step": 34000}, path)
    model = read_release(path, "natural_mnist")
    from vaells.networks import ConvDecoder, ConvEncoder

    ours_enc, ours_dec = ConvEncoder(latent_dim=6), ConvDecoder(latent_dim=6)
    ours_enc.load_state_dict(model.encoder)
    ours_dec.load_state_dict(model.decoder)
    z = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours_enc(anchors[:3]), encoder(anchors[:3]))
        torch.testing.assert_close(ours_dec(z), decoder(z))
    assert model.psi.shape == (4, 6, 6) and model.anchor_labels.tolist() == [0, 0] + [1, 1] + list(
        np.repeat(range(2, 10), 2))
    assert model.latent_scale is None  # no training log beside it


def test_the_import_refuses_files_that_do_not_fit(tmp_path, capsys):
    checkpoint, map_file, *_ = circles_release(tmp_path)
    torch.save({"Psi": torch.zeros(4, 1)}, tmp_path / "bad.pt")
    assert release_main(["import", str(tmp_path / "bad.pt"), "--experiment", "swiss_roll"]) == 2
    assert "lacks model_state_dict_decoder, model_state_dict_encoder" in capsys.readouterr().err
    wrong_map = tmp_path / "map.npy"
    np.save(wrong_map, np.zeros((7, 2)))
    assert release_main(["import", str(checkpoint), "--experiment", "concentric_circles", "--map", str(wrong_map),
                         "--out", str(tmp_path / "r2")]) == 2
    assert "data.ambient_dim=7" in capsys.readouterr().err

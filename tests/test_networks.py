"""Encoder/decoder shapes and the release's initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaells.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reinitialise


def test_mlp_shapes() -> None:
    enc, dec = MLPEncoder(input_dim=20, hidden_dim=32, latent_dim=2), MLPDecoder(2, 32, 20)
    z = enc(torch.randn(5, 20))
    assert z.shape == (5, 2)
    assert dec(z).shape == (5, 20)
    # Default sizes follow the release: 20 → 512 → d.
    assert MLPEncoder().net[0].weight.shape == (512, 20)


def test_mlp_decoder_output_is_linear() -> None:
    dec = MLPDecoder(2, 16, 4)
    assert isinstance(dec.net[-1], nn.Linear)
    assert (dec(torch.randn(200, 2) * 10) < 0).any()  # not squashed


@pytest.mark.parametrize(("image_size", "flat"), [(28, 3136), (32, 4096)])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_shapes(image_size: int, flat: int, channels: int) -> None:
    enc = ConvEncoder(in_channels=channels, image_size=image_size, latent_dim=6)
    dec = ConvDecoder(latent_dim=6, out_channels=channels, image_size=image_size)
    assert enc.head.in_features == flat and dec.head[0].out_features == flat
    z = enc(torch.rand(3, channels, image_size, image_size))
    assert z.shape == (3, 6)
    x_hat = dec(z)
    assert x_hat.shape == (3, channels, image_size, image_size)
    assert x_hat.min() >= 0 and x_hat.max() <= 1


@pytest.mark.parametrize("image_size", [30, 4])
def test_conv_rejects_sizes_without_an_s_over_4_grid(image_size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvEncoder(image_size=image_size)
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvDecoder(image_size=image_size)


def test_conv_weights_drawn_with_std_005_and_linear_left_default() -> None:
    torch.manual_seed(0)
    dec = ConvDecoder(latent_dim=6, image_size=28)
    convt = dec.features[2].weight  # 64·64·16 weights: the sample std is within a few percent
    assert convt.mean().abs() < 5e-3 and convt.std().item() == pytest.approx(0.05, rel=0.05)
    enc = ConvEncoder(image_size=28)
    assert enc.features[2].weight.std().item() == pytest.approx(0.05, rel=0.05)
    # PyTorch's default Linear init is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); with fan_in 3136 that is
    # much narrower than N(0, 0.05²).
    bound = 1 / 3136**0.5
    assert enc.head.weight.abs().max() <= bound + 1e-7


def test_reinitialise_draws_as_construction_does() -> None:
    torch.manual_seed(0)
    enc = ConvEncoder(image_size=28)
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(1.0)  # a trained state, far from any init
    torch.manual_seed(0)
    reinitialise(enc)
    # Every layer redrawn: the conv weights at the release's std 0.05, the Linear head in PyTorch's default.
    assert enc.features[2].weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert enc.head.weight.abs().max() <= 1 / 3136**0.5 + 1e-7
    assert all(not torch.equal(p, torch.ones_like(p)) for p in enc.parameters())

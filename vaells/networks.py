"""Encoders f_φ and decoders g_θ as in the authors' release (docs/method.md §5): plain ``nn.Module``s.

The encoders are deterministic: VAELLS' posterior q(z|x) is built around the encoder's point estimate
μ = f_φ(x) by transport operators, so there is no variance head. There is no batch-norm either. A baseline
whose posterior needs a spread (a log-variance, a concentration) widens the encoder's output layer with
``widen_output`` and keeps the same body.
"""

from __future__ import annotations

from torch import Tensor, nn

#: Std of the N(0, std²) init of conv and transposed-conv weights in the release (0.02 in its analysis
#: scripts, 0.05 in training).
CONV_INIT_STD = 0.05


def init_conv_weights(module: nn.Module, std: float = CONV_INIT_STD) -> None:
    """Draw every Conv2d/ConvTranspose2d weight from N(0, std²); leave biases and Linear layers alone.

    Linear layers keep PyTorch's default init on purpose: the release's init function matched layer
    class names case-sensitively and never caught its Linear layers, so the published results were
    trained with PyTorch's default there (docs/method.md §5).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, mean=0.0, std=std)


def reinitialise(module: nn.Module) -> None:
    """Draw every parameter of ``module`` afresh, as the networks here draw them when built: each layer's own
    ``reset_parameters`` (PyTorch's default init), then ``init_conv_weights`` for the conv layers. Uses the global
    RNG, so a seeded run redraws the same weights."""
    for layer in module.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    init_conv_weights(module)


class MLPEncoder(nn.Module):
    """Synthetic-data encoder: Linear(D→H) → ReLU → Linear(H→d). (B, D) → (B, d).

    Inputs with more than one feature axis are flattened, so any (B, *sample_shape) with
    prod(sample_shape) = D works.
    """

    def __init__(self, input_dim: int = 20, hidden_dim: int = 512, latent_dim: int = 2) -> None:
        super().__init__()
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, latent_dim)
        )

    def widen_output(self, extra: int) -> None:
        """Give the output layer ``extra`` more outputs: (B, D) -> (B, d + extra) (a baseline's spread head)."""
        self.net[-1] = widened_linear(self.net[-1], extra)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(start_dim=1))  # (B, d)


class MLPDecoder(nn.Module):
    """Synthetic-data decoder: Linear(d→H) → ReLU → Linear(H→D), with a linear output. (B, d) → (B, D)."""

    def __init__(self, latent_dim: int = 2, hidden_dim: int = 512, output_dim: int = 20) -> None:
        super().__init__()
        self.latent_dim, self.output_dim = latent_dim, output_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_dim)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, D)


def widened_linear(layer: nn.Linear, extra: int) -> nn.Linear:
    """A fresh Linear with the input of ``layer`` and ``extra`` more outputs, in PyTorch's default init (as every
    Linear layer of the release)."""
    if extra < 0:
        raise ValueError(f"extra outputs must be >= 0, got {extra}")
    return nn.Linear(layer.in_features, layer.out_features + extra, device=layer.weight.device,
                     dtype=layer.weight.dtype)


def _check_image_size(image_size: int) -> int:
    # Two stride-2 stages halve the side twice, so the bottleneck grid is S/4 × S/4 only when 4 | S.
    if image_size < 8 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 and at least 8, got {image_size}")
    return image_size // 4


class ConvEncoder(nn.Module):
    """Image encoder (release ``covNetModel.py``). (B, C, S, S) → (B, d), S a multiple of 4.

    Spatial sizes, with out = (in + 2p - k) / s + 1:
        S=28: 28 → 14 (k4 s2 p1) → 7 (k4 s2 p1) → 10 (pad 1 left/top, 2 right/bottom) → 7 (k4 s1 p0)
        S=32: 32 → 16 → 8 → 11 → 8
    The asymmetric pad and the k4 s1 p0 conv keep the S/4 grid: a 'same' conv with an even kernel
    needs 3 pixels of padding in total. Flattened: 64·(S/4)² = 3136 for 28, 4096 for 32.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_dim: int = 6,
                 channels: int = 64) -> None:
        super().__init__()
        side = _check_image_size(image_size)
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),  # (B, 64, S/2, S/2)
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1),  # (B, 64, S/4, S/4)
            nn.ReLU(),
            nn.ZeroPad2d((1, 2, 1, 2)),  # (B, 64, S/4 + 3, S/4 + 3)
            nn.Conv2d(channels, channels, kernel_size=4, stride=1, padding=0),  # (B, 64, S/4, S/4)
            nn.ReLU(),
        )
        self.head = nn.Linear(channels * side * side, latent_dim)
        init_conv_weights(self)

    def widen_output(self, extra: int) -> None:
        """Give the output layer ``extra`` more outputs: (B, C, S, S) -> (B, d + extra) (a baseline's spread head)."""
        self.head = widened_linear(self.head, extra)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)  # (B, 64, S/4, S/4)
        return self.head(h.flatten(start_dim=1))  # (B, d)


class ConvDecoder(nn.Module):
    """Image decoder (release ``covNetModel.py``). (B, d) → (B, C, S, S) in [0, 1], S a multiple of 4.

    Spatial sizes, with out = (in - 1)·s - 2p + k:
        S=28: 7 → 8 (k4 s1 p1) → 14 (k4 s2 p2) → 28 (k4 s2 p1)
        S=32: 8 → 9 → 16 → 32
    In general S/4 → S/4 + 1 → S/2 → S, so the release's paddings serve every multiple of 4 unchanged.
    """

    def __init__(self, latent_dim: int = 6, out_channels: int = 1, image_size: int = 28,
                 channels: int = 64) -> None:
        super().__init__()
        side = _check_image_size(image_size)
        self.latent_dim, self.out_channels, self.image_size = latent_dim, out_channels, image_size
        self.grid = (channels, side, side)
        self.head = nn.Sequential(nn.Linear(latent_dim, channels * side * side), nn.ReLU())
        self.features = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 4, stride=1, padding=1),  # (B, 64, S/4 + 1, S/4 + 1)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=2),  # (B, 64, S/2, S/2)
            nn.ReLU(),
            nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),  # (B, C, S, S)
            nn.Sigmoid(),  # pixels in [0, 1], matching MNIST / 255
        )
        init_conv_weights(self)

    def forward(self, z: Tensor) -> Tensor:
        h = self.head(z).view(z.shape[0], *self.grid)  # (B, 64, S/4, S/4)
        return self.features(h)  # (B, C, S, S)


"""What each learned operator Psi_m is: its eigenvalues, read as a rotation, a spiral, a dilation or mixed, and
how far it moved from its random start.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from vaells.transport import TransportOperator

#: Readings of an operator's spectrum (``operator_reading``).
ROTATION, SPIRAL, DILATION, MIXED = "rotation", "spiral", "dilation", "mixed"


def operator_reading(psi_m: Tensor, max_turn_growth: float = 0.25, ratio: float = 3.0) -> tuple[str, Tensor]:
    """What a generator Psi_m (d, d) does, read from its eigenvalues a +- i w.

    An eigenvalue pair turns its plane by w per unit of c and scales it by e^a, so over one full turn the
    orbit's radius changes by the factor e^(2 pi |a| / |w|). The pair reads "rotation" when that log-growth
    per turn is at most ``max_turn_growth`` (orbits close, as the circles' and a rotated digit's should),
    "dilation" when |a| >= ratio |w| (growth or decay with little turning), and "spiral" in between (the swiss
    roll's operator, -0.0026 +- 0.0267i, grows by e^0.61 per turn). The operator's reading is that of its
    dominant eigenvalue (largest modulus), or "mixed" when another eigenvalue of at least half that modulus
    reads differently. Returns the reading and the eigenvalues (complex, by decreasing modulus).
    """
    lam = torch.linalg.eigvals(psi_m.detach().to("cpu", torch.float64))
    lam = lam[lam.abs().argsort(descending=True)]

    def read(v: Tensor) -> str:
        a, w = abs(float(v.real)), abs(float(v.imag))
        if a >= ratio * w:
            return DILATION
        return ROTATION if 2 * math.pi * a <= max_turn_growth * w else SPIRAL

    top = float(lam[0].abs()) if lam.numel() else 0.0
    if top == 0.0:
        return MIXED, lam
    readings = {read(v) for v in lam if float(v.abs()) >= 0.5 * top}
    return (readings.pop() if len(readings) == 1 else MIXED), lam


def operator_metrics(transport: TransportOperator) -> dict[str, list]:
    """What each operator learned: ``operator_norm`` (Frobenius), ``operator_drift`` (relative distance from
    its random start; NaN for checkpoints that predate the stored start), ``operator_reading`` (rotation,
    spiral, dilation or mixed: ``transport.operator_reading``) and ``operator_eigenvalues`` ([re, im] pairs
    by decreasing modulus), one entry per operator."""
    readings = [operator_reading(p) for p in transport.psi]
    return {
        "operator_norm": [float(v) for v in transport.norms()],
        "operator_drift": [float(v) for v in transport.drift()],
        "operator_reading": [r for r, _ in readings],
        "operator_eigenvalues": [[[float(v.real), float(v.imag)] for v in lam] for _, lam in readings],
    }


def operator_controls(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The controls of a claim about the learned operators: copies of ``model`` that learned nothing in them,
    with every other part (encoder, decoder, anchors) as trained.

    - ``zero_psi``: Psi = 0, no transport at all: a path never moves and a posterior sample is its encoding
      plus noise;
    - ``init_psi``: Psi at its random initialisation (left out for checkpoints that predate the stored start).

    A metric that a control scores as well as the model says nothing about what the operators learned
    (docs/method.md §7)."""
    controls = []
    for name, psi in (("zero_psi", torch.zeros_like(model.transport.psi)), ("init_psi", model.transport.psi_init)):
        if not bool(torch.isfinite(psi).all()):
            continue
        control = copy.deepcopy(model)
        with torch.no_grad():
            control.transport.psi.copy_(psi)
        controls.append((name, control))
    return controls

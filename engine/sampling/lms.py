"""Coefficients of the linear multistep (LMS) sampler: integrals of Lagrange basis polynomials over one step.

Why scipy's ``quad`` rather than the exact polynomial integral: A1111 (k-diffusion) integrates numerically with
``epsrel=1e-4``; the exact integral differs by ~1e-6 in the latents, so the same quadrature is used here.  The
sigmas are read as float32 values, as k-diffusion reads them from a numpy copy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import integrate

__all__ = ["lms_coefficients"]


def _coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


def lms_coefficients(sigmas: torch.Tensor, i: int, order: int) -> list[float]:
    """The weights of the last ``order`` derivatives (newest first) for step ``i``."""
    if order - 1 > i:
        raise ValueError(f"LMS order {order} needs {order - 1} earlier steps, step {i} has {i}")
    t = sigmas.detach().cpu().numpy()
    return [_coefficient(order, t, i, j) for j in range(order)]

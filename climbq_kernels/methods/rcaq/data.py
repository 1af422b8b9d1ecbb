"""Synthetic two-sensor tasks for RCAQ (algorithms.md §5): a Gaussian mixture and a correlated
bivariate Gaussian, each with a fixed linear classifier through the origin.

Each sensor sees one coordinate. In the bivariate task the decision boundary x1 = x2 runs along
the distribution's major axis, so much of the mass lies near it and an MSE quantizer's cells
straddle it; in the mixture it cuts through one component and leaves the others clear.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MIXTURE_MEANS = ((-2.0, -1.0), (0.5, 1.5), (2.0, -0.5), (0.3, -0.6))
MIXTURE_WEIGHTS = (0.25, 0.25, 0.25, 0.25)
MIXTURE_STD = 0.7
MIXTURE_W = (1.0, 1.0)
BIVARIATE_CORRELATION = 0.8
BIVARIATE_W = (1.0, -1.0)


@dataclass(frozen=True)
class Task:
    """Training and test points (N, 2) float64 and the classifier's normal w (2,), unit norm."""

    name: str
    x_train: Tensor
    x_test: Tensor
    w: Tensor


def _unit(v) -> Tensor:
    w = torch.tensor(v, dtype=torch.float64)
    return w / w.norm()


def gaussian_mixture(n: int, generator: torch.Generator) -> Tensor:
    """n points (n, 2) float64 from an equal-weight mixture of isotropic Gaussians."""
    means = torch.tensor(MIXTURE_MEANS, dtype=torch.float64)
    component = torch.multinomial(torch.tensor(MIXTURE_WEIGHTS), n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return means[component] + MIXTURE_STD * noise


def bivariate_gaussian(n: int, generator: torch.Generator) -> Tensor:
    """n points (n, 2) float64 from N(0, [[1, rho], [rho, 1]])."""
    rho = BIVARIATE_CORRELATION
    cholesky = torch.tensor([[1.0, 0.0], [rho, (1 - rho ** 2) ** 0.5]], dtype=torch.float64)
    return torch.randn(n, 2, generator=generator, dtype=torch.float64) @ cholesky.T


TASKS = {"mixture": (gaussian_mixture, MIXTURE_W), "bivariate": (bivariate_gaussian, BIVARIATE_W)}


def make_task(name: str, n_train: int, n_test: int, seed: int) -> Task:
    """The task `name` ("mixture" or "bivariate") with fresh training and test draws for `seed`."""
    if name not in TASKS:
        raise ValueError(f"name must be one of {sorted(TASKS)}, got {name!r}")
    sample, w = TASKS[name]
    generator = torch.Generator().manual_seed(seed)
    return Task(name, sample(n_train, generator), sample(n_test, generator), _unit(w))

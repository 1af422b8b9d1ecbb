"""The error rule every kernel is tested by, for our tests and for users testing theirs.

A kernel is right when its error against the float64 reference is at most twice the error
of the reference itself run in the kernel's dtype (the flash-attention rule). Errors are
mean absolute errors: for quantizers a max-norm is useless, since one flipped rounding
decision at a tie costs a whole level whichever side computes it.

Outputs that are quantized (levels `step` apart) may differ from the float64 answer by
whole levels where the input sits on a rounding boundary to within the compute precision;
`step` turns on that check: every mismatch must be exactly one level, and a budget of
`flip_fraction` of the elements (plus one) is allowed beyond the 2x rule.

Also here: `median_seconds`, the wall-clock median the CPU benchmarks and `climbq demo` time with.
"""

from __future__ import annotations

import time

import torch


def median_seconds(fn, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall-clock seconds of `repeats` calls of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def mean_abs_error(got: torch.Tensor, ref64: torch.Tensor) -> float:
    """Mean |got - ref64|, computed in float64."""
    return (got.double() - ref64.double()).abs().mean().item() if got.numel() else 0.0


def assert_error_rule(got: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor, *,
                      step: float | None = None, flip_fraction: float = 1e-4, name: str = "output") -> None:
    """Raise AssertionError unless `got` meets the error rule against `ref64`.

    `ref_lowp` is the reference run in `got`'s dtype. For quantized outputs pass the level
    spacing `step`.
    """
    if got.shape != ref64.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)} != reference {tuple(ref64.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{name}: non-finite values (unwritten or poisoned elements?)")
    err_got = mean_abs_error(got, ref64)
    err_ref = mean_abs_error(ref_lowp, ref64)
    eps = torch.finfo(got.dtype).eps if got.is_floating_point() else 0.0
    scale = ref64.double().abs().mean().item() if ref64.numel() else 0.0
    allowed = 2.0 * err_ref + eps * scale
    if step is not None:
        diff = (got.double() - ref64.double()).abs()
        flips = diff > step * 1e-3 + 2 * eps * ref64.double().abs()
        if flips.any():
            worst = diff[flips].max().item()
            if worst > step * (1 + 1e-2) + 4 * eps * ref64.double().abs().max().item():
                raise AssertionError(f"{name}: an element is off by {worst:.4g}, more than one level ({step:.4g})")
        allowed += step * (1 + flip_fraction * got.numel()) / max(got.numel(), 1)
    if err_got > allowed:
        raise AssertionError(
            f"{name}: mean error {err_got:.3e} exceeds the error rule {allowed:.3e} "
            f"(reference in {ref_lowp.dtype}: {err_ref:.3e})")


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised-looking tensor full of NaN (or the max value for integers).

    Kernels that write into preallocated outputs are tested with poisoned buffers so that
    an element they forget to write shows up as NaN instead of a plausible zero.
    """
    if t.is_floating_point():
        return torch.full_like(t, float("nan"))
    return torch.full_like(t, torch.iinfo(t.dtype).max)

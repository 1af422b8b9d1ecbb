"""Host time of one quantizer forward + backward, against PyTorch's own fake quant.

On tiny tensors the kernels take next to nothing, so what is timed is the host path: argument
checks, table building, dispatch, autograd. That path is what a GPU training step pays per
quantizer on top of its kernel launches. One thread (`torch.set_num_threads(1)`); every round
times every candidate of a case back to back (order rotating), each as the median of `--calls`
calls, and each ratio (baseline time over the candidate's) is taken within its round.

Cases: the ClimbQ activation quantizer with labels against `torch.fake_quantize_per_tensor_affine`
(the issue's 1.5x budget), and LSQ with a learned step against
`torch._fake_quantize_learnable_per_tensor_affine` (1.2x), each as the public function and as the
QAT module that `quantize_` installs.

Rows go to the results ledger (bench/ledger.py; `--ledger PATH`, `--no-ledger`).

    python3 bench/host_overhead.py [--rounds 15] [--calls 50]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import climbq_kernels as cq
import ledger
from climbq_kernels.nn import ClimbQActQuant, LSQActQuant

SHAPE = (8, 16)
CLASSES = 4


def _fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def call():
        forward(x).sum().backward()
    return call


def cases(stack: contextlib.ExitStack) -> dict[str, dict[str, Callable[[], None]]]:
    """{case: {candidate: one forward + backward}}; the first candidate is the baseline.

    The ClimbQ module runs inside one `class_labels` block (entered on `stack`), as every layer
    of a model does after the first has built the batch's table: that is the per-quantizer cost.
    Its other row enters the block per call, so it adds the per-batch cost (the table).
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*SHAPE, generator=gen).requires_grad_()
    labels = torch.randint(0, CLASSES, (SHAPE[0],), generator=gen)
    climbq_module = ClimbQActQuant(bits=4, num_classes=CLASSES)

    def climbq_module_new_batch(t):
        with cq.class_labels(labels):
            return climbq_module(t)

    stack.enter_context(cq.class_labels(labels))

    torch_scale, torch_zero = torch.tensor([0.1], requires_grad=True), torch.tensor([0.0])
    lsq_step = torch.tensor(0.1, requires_grad=True)
    lsq_module = LSQActQuant(bits=4, signed=True)
    lsq_module(x.detach())  # its step is set from a first batch
    grad_factor = 1.0 / (x.numel() * 7) ** 0.5
    return {
        f"climbq_act fwd+bwd {SHAPE} fp32, host": {
            "torch fake_quantize_per_tensor_affine": _fwd_bwd(
                lambda t: torch.fake_quantize_per_tensor_affine(t, 0.1, 0, -8, 7), x),
            "climbq climbq_act_quant": _fwd_bwd(
                lambda t: cq.climbq_act_quant(t, labels, num_classes=CLASSES, bits=4), x),
            "climbq ClimbQActQuant (batch table built)": _fwd_bwd(climbq_module, x),
            "climbq ClimbQActQuant + class_labels and table per call": _fwd_bwd(climbq_module_new_batch, x),
        },
        f"LSQ per-tensor fwd+bwd {SHAPE} fp32, host": {
            "torch learnable fake quant": _fwd_bwd(
                lambda t: torch._fake_quantize_learnable_per_tensor_affine(t, torch_scale, torch_zero, -8, 7,
                                                                           grad_factor), x),
            "climbq fake_quant (learned scale)": _fwd_bwd(lambda t: cq.fake_quant(t, lsq_step, 0, -8, 7), x),
            "climbq LSQActQuant": _fwd_bwd(lsq_module, x),
        },
    }


def median_of_calls(call: Callable[[], None], calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run(rounds: int, calls: int) -> dict[str, dict[str, dict]]:
    """{case: {candidate: {"median_s", "ratios"}}}, interleaved as the module docstring says."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _interleaved(rounds, calls)
    finally:
        torch.set_num_threads(threads)


def _interleaved(rounds: int, calls: int) -> dict[str, dict[str, dict]]:
    results = {}
    with contextlib.ExitStack() as stack:
        all_cases = cases(stack)
        for case, candidates in all_cases.items():
            results[case] = _interleaved_case(candidates, rounds, calls)
    return results


def _interleaved_case(candidates: dict[str, Callable[[], None]], rounds: int, calls: int) -> dict[str, dict]:
    names = list(candidates)
    for call in candidates.values():  # warm-up: first-call costs are not host overhead
        for _ in range(5):
            call()
    times = {name: [] for name in names}
    ratios = {name: [] for name in names}
    for turn in range(rounds):
        order = names[turn % len(names):] + names[:turn % len(names)]
        this_round = {name: median_of_calls(candidates[name], calls) for name in order}
        for name in names:
            times[name].append(this_round[name])
            ratios[name].append(this_round[names[0]] / this_round[name])
    return {name: {"median_s": statistics.median(times[name]), "ratios": ratios[name]} for name in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50)
    ledger.add_arguments(parser)
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    run_ledger = ledger.Ledger("cpu", "bench/host_overhead.py", ledger.resolve_path(args.ledger, not args.no_ledger),
                               method=f"interleaved rounds ({args.rounds}) of the median of {args.calls} calls, "
                                      "1 thread, ratios within a round")
    rows = []
    print("| case | candidate | median us | baseline time / candidate's, per round: median (quartiles) |")
    print("|---|---|---|---|")
    for case, candidates in run(args.rounds, args.calls).items():
        baseline = next(iter(candidates))
        for name, result in candidates.items():
            quartiles = statistics.quantiles(result["ratios"], n=4) if len(result["ratios"]) > 1 else \
                [result["ratios"][0]] * 3
            print(f"| {case} | {name} | {result['median_s'] * 1e6:.1f} | {quartiles[1]:.2f}x "
                  f"({quartiles[0]:.2f}-{quartiles[2]:.2f}) |")
            rows.append(run_ledger.row(case, name, result["median_s"], baseline_s=candidates[baseline]["median_s"],
                                       ratio_vs=baseline, round_ratio_quartiles=quartiles))
    run_ledger.append(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

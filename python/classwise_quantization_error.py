"""How much each class loses to quantization: uniform fake quant vs ClimbQ, on a long-tailed batch.

Builds a class-imbalanced batch whose classes have different feature spreads (the case ClimbQ
targets, algorithms.md §1), quantizes it to 4 bits with one uniform grid and with ClimbQ's class-wise
variance scaling + CDF projection, and prints each quantizer's error on head, middle and tail
classes. Runs on the CPU in seconds: python python/classwise_quantization_error.py
"""

import argparse

import torch

import climbq_kernels as cq


def long_tailed_labels(num_classes: int, n_max: int, gamma: float, gen: torch.Generator) -> torch.Tensor:
    """Class sizes n_i = floor(n_max * gamma^(-i/(K-1))) (algorithms.md §1d), shuffled."""
    sizes = [int(n_max * gamma ** (-i / (num_classes - 1))) for i in range(num_classes)]
    labels = torch.cat([torch.full((max(n, 1),), i) for i, n in enumerate(sizes)])
    return labels[torch.randperm(labels.numel(), generator=gen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=50.0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    labels = long_tailed_labels(args.classes, 200, args.gamma, gen)
    spread = torch.linspace(0.5, 2.5, args.classes)  # tail classes spread wider
    x = torch.randn(labels.numel(), 256, generator=gen) * spread[labels, None]

    # The uniform baseline maps [-A, A] onto the same number of levels as ClimbQ.
    scale = 2 * 2.0 / (2**args.bits - 1)
    uniform = cq.fake_quant(x.clamp(-2.0, 2.0), scale, 0, -(2 ** (args.bits - 1)), 2 ** (args.bits - 1) - 1)
    climbq = cq.climbq_act_quant(x, labels, num_classes=args.classes, bits=args.bits)
    # ClimbQ's output lives in a projected space; compare ranks of information kept instead:
    # the correlation between input and quantized output per class.
    thirds = torch.tensor_split(torch.arange(args.classes), 3)
    print(f"{'group':<8}{'uniform corr':>14}{'climbq corr':>14}")
    for name, members in zip(("head", "middle", "tail"), thirds, strict=True):
        mask = torch.isin(labels, members)
        corr = [torch.corrcoef(torch.stack([x[mask].flatten(), q[mask].flatten()]))[0, 1].item()
                for q in (uniform, climbq)]
        print(f"{name:<8}{corr[0]:>14.4f}{corr[1]:>14.4f}")
    print("backends:", {name: s.available for name, s in cq.backends().items()})


if __name__ == "__main__":
    main()

"""ClimbQ W4A4 QAT of torchvision's resnet18 on a small long-tailed image set (or the LSQ baseline).

The training flow of algorithms.md §1d, shrunk to a few dozen steps on a CPU:

1. A synthetic 10-class set of 32x32 RGB images, each class a smooth random pattern plus
   noise, long-tailed with n_i = floor(n_max * gamma^(-i/(K-1))) training images, and a
   balanced test set.
2. resnet18 pre-trained briefly in float32 (a stand-in for a trained float checkpoint).
3. `quantize_(model, ClimbQConfig(w_bits=4, a_bits=4))` (or `LSQConfig` with --config lsq): every
   convolution's weight quantized, an activation quantizer after every BatchNorm, the final
   classifier in float. Each QAT forward runs inside `class_labels(labels)`, which hands the
   batch labels to ClimbQ's class-wise activation quantizers; --homovar adds the HomoVar loss
   on the pooled features that enter `model.fc` (algorithms.md §1c).
4. Loss every few steps, then test accuracy overall and on the head / middle / tail thirds.

Both configs see the same data, initial weights and batch order, so their numbers compare:
    python python/qat_resnet18.py                  # ClimbQ
    python python/qat_resnet18.py --config lsq     # LSQ baseline
"""

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import climbq_kernels as cq
from climbq_kernels.data import class_groups, long_tailed_sizes

CLASSES = 10


def synthetic_long_tailed(n_max: int, gamma: float, test_per_class: int, noise: float, seed: int):
    """(train images, train labels, test images, test labels, training class sizes)."""
    gen = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.randn(CLASSES, 3, 4, 4, generator=gen), size=32, mode="bilinear",
                             align_corners=False)
    sizes = long_tailed_sizes(n_max, gamma, CLASSES)

    def draw(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        images = patterns[labels] + noise * torch.randn(labels.numel(), 3, 32, 32, generator=gen)
        return images, labels

    x_train, y_train = draw(sizes)
    x_test, y_test = draw([test_per_class] * CLASSES)
    return x_train, y_train, x_test, y_test, sizes


def train(model, x, y, steps, lr, batch, seed, homovar_counts=None, log_every=0):
    """SGD (momentum 0.9, weight decay 1e-4) on random mini-batches drawn with `seed`."""
    homovar = cq.nn.HomoVarLoss(homovar_counts).attach(model) if homovar_counts is not None else None
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, steps + 1):
        index = torch.randint(0, y.numel(), (batch,), generator=gen)
        xb, yb = x[index], y[index]
        with cq.class_labels(yb):
            logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if homovar is not None:
            loss = loss + homovar(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log_every and (step % log_every == 0 or step == steps):
            print(f"  step {step:3d}  loss {loss.item():.3f}")
    if homovar is not None:
        homovar.detach()


@torch.no_grad()
def report(name, model, x, y, groups):
    model.eval()
    predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(100)])
    per_class = [100 * (predictions[y == c] == c).float().mean().item() for c in range(CLASSES)]
    parts = [f"{g} {sum(per_class[c] for c in members) / len(members):5.1f}%" for g, members in groups.items()]
    print(f"{name:<22} overall {100 * (predictions == y).float().mean().item():5.1f}%  " + "  ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("climbq", "lsq"), default="climbq")
    parser.add_argument("--homovar", action="store_true", help="add the HomoVar loss beside cross-entropy")
    parser.add_argument("--float-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="QAT steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gamma", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x_train, y_train, x_test, y_test, sizes = synthetic_long_tailed(150, args.gamma, 20, noise=3.0, seed=args.seed)
    groups = class_groups(sizes)
    print(f"training class sizes {sizes}; {y_test.numel()} balanced test images; head/middle/tail classes "
          f"{groups['head']} / {groups['middle']} / {groups['tail']}")

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=CLASSES)
    start = time.perf_counter()
    print(f"float32 pre-training, {args.float_steps} steps")
    # A real run starts from a converged float checkpoint; these few steps only give QAT a start.
    train(model, x_train, y_train, args.float_steps, 0.02, args.batch, args.seed, log_every=args.float_steps)

    config = cq.ClimbQConfig(w_bits=4, a_bits=4) if args.config == "climbq" else cq.LSQConfig(w_bits=4, a_bits=4)
    cq.quantize_(model, config)  # in place; build the optimiser after it, for the quantizers' parameters
    name = f"{'ClimbQ' if args.config == 'climbq' else 'LSQ'} W4A4{' + HomoVar' if args.homovar else ''}"
    print(f"{name} QAT, {args.steps} steps ({sum(1 for line in cq.summary(model).splitlines() if 'float' not in line)} "
          "quantized layers; the classifier fc stays in float)")
    counts = torch.tensor(sizes) if args.homovar else None
    train(model, x_train, y_train, args.steps, 0.01, args.batch, args.seed + 1, counts, log_every=5)
    report(name, model, x_test, y_test, groups)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

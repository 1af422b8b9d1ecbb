"""`climbq demo`: the library's main job end to end, in about a minute on a laptop CPU.

1. A long-tailed classification task (algorithms.md §1d class sizes n_i = n_max * gamma^(-i/(K-1)),
   tail classes spread wider): the imbalance ClimbQ is built for.
2. The same MLP trained twice: in float, and quantization-aware with ClimbQ at 4 bits (weights
   through the ClimbQ weight quantizer as a parametrization, hidden activations through the
   class-wise activation quantizer, HomoVar loss beside cross-entropy).
3. The QAT model converted to INT4 for serving (lossless: its weights are 4-bit codes already)
   and checked to predict what it predicted before conversion.
4. One 4096x4096 layer served at batch 1: INT4 kernel against dense float32 F.linear.

Accuracy is reported on a balanced test set, per head / middle / tail third of the classes.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm import tqdm

import climbq_kernels as cq
from climbq_kernels.testing import median_seconds

CLASSES, FEATURES, HIDDEN, BITS = 10, 32, 256, 4


class ClimbQWeight(nn.Module):
    """Parametrization: the layer computes with its ClimbQ-quantized weight (algorithms.md §1b)."""

    def forward(self, weight):
        return cq.climbq_weight_quant(weight, BITS)


class Classifier(nn.Module):
    """MLP whose hidden activations go through ClimbQ's activation quantizer when `quantized`."""

    def __init__(self, quantized: bool):
        super().__init__()
        self.quantized = quantized
        self.hidden = nn.ModuleList([nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, HIDDEN)])
        self.head = nn.Linear(HIDDEN, CLASSES)
        if quantized:
            for layer in (*self.hidden, self.head):
                parametrize.register_parametrization(layer, "weight", ClimbQWeight())

    def features(self, x, labels=None):
        for layer in self.hidden:
            x = layer(x)
            # Training sees the labels (class-wise sigma); inference quantizes without them.
            x = cq.climbq_act_quant(x, labels, num_classes=CLASSES, bits=BITS, relu=True) if self.quantized \
                else x.relu()
        return x

    def forward(self, x, labels=None):
        return self.head(self.features(x, labels))


def long_tailed_data(n_max: int, gamma: float, gen: torch.Generator, balanced: bool = False):
    """(x, labels): Gaussian classes around random centres, tail classes rarer and wider."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(1)) * 0.7
    spread = torch.linspace(1.0, 2.0, CLASSES)
    sizes = [n_max if balanced else max(int(n_max * gamma ** (-i / (CLASSES - 1))), 2) for i in range(CLASSES)]
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    x = centres[labels] + torch.randn(labels.numel(), FEATURES, generator=gen) * spread[labels, None]
    return x, labels


def train(model: Classifier, x, labels, steps: int, gen: torch.Generator) -> float:
    """Adam on shuffled mini-batches; HomoVar joins cross-entropy for the quantized model.
    Returns seconds per step."""
    counts = torch.bincount(labels, minlength=CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="ClimbQ QAT" if model.quantized else "float", leave=False):
        batch = torch.randint(0, labels.numel(), (256,), generator=gen)
        xb, yb = x[batch], labels[batch]
        features = model.features(xb, yb if model.quantized else None)
        logits = model.head(features)
        loss = nn.functional.cross_entropy(logits, yb)
        if model.quantized:
            loss = loss + cq.homovar_loss(features, logits, yb, counts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def accuracy_by_group(predictions, labels) -> list[float]:
    """Accuracy (%) on the head, middle and tail thirds of the classes."""
    groups = torch.tensor_split(torch.arange(CLASSES), 3)
    return [100 * (predictions == labels)[torch.isin(labels, g)].float().mean().item() for g in groups]


def run(steps: int = 400, seed: int = 0) -> int:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, labels = long_tailed_data(n_max=2000, gamma=50.0, gen=gen)
    x_test, labels_test = long_tailed_data(n_max=300, gamma=1.0, gen=gen, balanced=True)
    backend = {name: s.available for name, s in cq.backends().items()}
    print(f"climbq demo: {labels.numel()} training samples, class sizes {torch.bincount(labels).tolist()}")
    print(f"backends available: {', '.join(name for name, ok in backend.items() if ok)}")

    rows = []
    models = {}
    for quantized in (False, True):
        model = Classifier(quantized)
        seconds = train(model, x, labels, steps, gen)
        model.eval()
        with torch.no_grad():
            predictions = model(x_test).argmax(1)
        name = f"ClimbQ W{BITS}A{BITS} QAT" if quantized else "float32"
        rows.append((name, accuracy_by_group(predictions, labels_test), f"{1e3 * seconds:.1f} ms/step"))
        models[quantized] = (model, predictions)

    qat, qat_predictions = models[True]
    served = cq.convert_int4(qat, climbq_bits=BITS, progress=False)
    with torch.no_grad():
        served_predictions = served(x_test).argmax(1)
    agreement = 100 * (served_predictions == qat_predictions).float().mean().item()
    rows.append((f"INT4 served ({agreement:.1f}% same predictions)", accuracy_by_group(served_predictions, labels_test),
                 ""))

    print(f"\n{'model':<40}{'head':>8}{'middle':>8}{'tail':>8}   training")
    for name, accs, note in rows:
        print(f"{name:<40}" + "".join(f"{a:>7.1f}%" for a in accs) + f"   {note}")

    layer = nn.Linear(4096, 4096)
    int4_layer = cq.nn.Int4Linear.from_linear(layer, group_size=128)
    one_row = torch.randn(1, 4096)
    with torch.no_grad():
        dense_ms = 1e3 * median_seconds(lambda: layer(one_row), repeats=30, warmup=3)
        int4_ms = 1e3 * median_seconds(lambda: int4_layer(one_row), repeats=30, warmup=3)
    print(f"\nserving one 4096x4096 layer at batch 1 on the CPU: INT4 {int4_ms:.2f} ms, dense float32 "
          f"{dense_ms:.2f} ms ({dense_ms / int4_ms:.1f}x)")
    return 0 if agreement >= 99.0 else 1

"""ACS coreset QAT in a plain training loop: each epoch trains on 10% of the long-tailed digits,
re-selected every 2 epochs by the quantized and float models' scores (algorithms.md §2).

    python python/acs_coreset_qat.py

Prints the coreset per selection (size, class mix, beta), the scoring time beside the training
time, and the final test accuracy of the W4A4 LSQ model.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import climbq_kernels as cq
from climbq_kernels import data
from climbq_kernels.methods import acs

EPOCHS, FRACTION, INTERVAL = 8, 0.1, 2


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # batches this small run fastest on one thread
    split = data.long_tailed_split("digits", gamma=10.0, seed=0)
    mean, std = split.train_images.mean(), split.train_images.std()
    x, y = (split.train_images - mean) / std, split.train_labels
    x_test = (split.test_images - mean) / std

    float_model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                nn.Linear(128, split.num_classes))
    optimizer = torch.optim.SGD(float_model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(EPOCHS):
        for index in torch.randperm(y.numel()).split(32):
            loss = F.cross_entropy(float_model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    qat_model = cq.quantize_(copy.deepcopy(float_model), cq.LSQConfig(w_bits=4, a_bits=4))
    # Scores come from the un-augmented training set in dataset order; training batches come
    # from the sampler, which holds the current coreset.
    score_loader = DataLoader(TensorDataset(x, y), batch_size=512)
    sampler = acs.CoresetSampler(qat_model, float_model, score_loader, y, epochs=EPOCHS, fraction=FRACTION,
                                 interval=INTERVAL, progress=False)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=16, sampler=sampler, drop_last=True)
    optimizer = torch.optim.SGD(qat_model.parameters(), lr=0.02, momentum=0.9)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        qat_model.train()
        for xb, yb in train_loader:
            loss = F.cross_entropy(qat_model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch % INTERVAL == 0:
            picked = torch.bincount(y[sampler.indices], minlength=split.num_classes).tolist()
            print(f"epoch {epoch}: beta {sampler.history[-1]['beta']:.3f}, coreset of {sampler.indices.numel()} "
                  f"of {y.numel()} images, per class {picked}")
    seconds = time.perf_counter() - start
    qat_model.eval()
    with torch.no_grad():
        accuracy = (qat_model(x_test).argmax(1) == split.test_labels).float().mean().item()
    print(f"QAT {seconds:.2f} s, of which ACS scoring {sampler.scoring_seconds:.3f} s; "
          f"W4A4 test accuracy {100 * accuracy:.1f}%")


if __name__ == "__main__":
    main()

"""torch.compile of quantize_d models: one graph, eager's numbers, no recompilation per batch.

`fullgraph=True` proves there is no graph break; the compile counter counts backend calls (a
first compile may call it twice when dynamo restarts its analysis) and must not grow after the
first batch.

`class_labels` sets a ContextVar, which torch.compile cannot trace, so it stays outside the
compiled function: compile the model (as torch.compile(model) is normally used) and run it inside
`with class_labels(labels):`. Inside, the quantizers read the labels without a graph break.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import climbq_kernels as cq

CLASSES = 10
CONFIGS = [cq.ClimbQConfig(), cq.ClimbQConfig(sigma="class_std", act_form="relu"), cq.LSQConfig()]
IDS = ["climbq", "climbq-variants", "lsq"]


def model_for(config) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                          nn.ReLU(), nn.Linear(32, CLASSES))
    return cq.quantize_(model, config)


def step(model, x, labels):
    with cq.class_labels(labels):
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_compiled_model_has_no_graph_break_and_does_not_recompile_on_new_labels(config, gen):
    model = model_for(config)
    # LSQ sets its activation steps from the first batch (a Python-level branch): one eager step.
    step(model, torch.randn(16, 12, generator=gen), torch.randint(0, CLASSES, (16,), generator=gen))
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    compiles = []
    for _ in range(3):
        x, labels = torch.randn(16, 12, generator=gen), torch.randint(0, CLASSES, (16,), generator=gen)
        step(compiled, x, labels)
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[-1] == compiles[0], compiles


def test_dynamic_batch_sizes_compile_once(gen):
    model = model_for(cq.ClimbQConfig())
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    compiles = []
    for batch in (8, 12, 20):
        x, labels = torch.randn(batch, 12, generator=gen), torch.randint(0, CLASSES, (batch,), generator=gen)
        step(compiled, x, labels)
        compiles.append(counter.frame_count)
    assert compiles[0] >= 1 and compiles[-1] == compiles[0], compiles


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_inductor_training_step_matches_eager(config, gen):
    eager, compiled_model = model_for(config), model_for(config)
    compiled = torch.compile(compiled_model, fullgraph=True)
    for _ in range(3):
        x, labels = torch.randn(16, 12, generator=gen), torch.randint(0, CLASSES, (16,), generator=gen)
        torch.testing.assert_close(step(compiled, x, labels), step(eager, x, labels))
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name)

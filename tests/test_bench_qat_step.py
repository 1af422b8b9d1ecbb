"""bench/plain_qat.py (the quantizers as plain PyTorch modules) against the float64 reference, and
bench/qat_step.py (the QAT step benchmark) on a tiny model: every candidate timed in every round,
ratios taken within a round."""

import math

import pytest
import torch
from torch import nn

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.nn import qat

from .conftest import load_bench_script

CLASSES = 10


@pytest.fixture(scope="module")
def plain():
    return load_bench_script("plain_qat")


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("qat_step")


@pytest.mark.parametrize(("shape", "bits"), [((16, 5), 4), ((12, 3, 7, 5), 2), ((9, 6, 4), 8), ((1, 33), 1)])
def test_plain_climbq_act_matches_the_reference_forward_and_backward(plain, gen, shape, bits):
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    labels = torch.randint(0, 4, (shape[0],), generator=gen)  # a few classes: sigma differs per sample
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    quant = plain.PlainClimbQAct(bits, CLASSES, act_range=1.5)
    with cq.class_labels(labels):
        out = quant(x)
    (dx,) = torch.autograd.grad(out, x, grad)
    sigma = reference.class_sigma(labels, CLASSES, torch.float64)[labels]
    mu = torch.zeros_like(sigma)
    torch.testing.assert_close(out, reference.climbq_act_quant(x.detach(), sigma, mu, bits, 1.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(dx, reference.climbq_act_quant_backward(grad, x.detach(), sigma, mu, bits, 1.5),
                               rtol=1e-12, atol=1e-12)


def test_plain_climbq_act_without_labels_uses_the_inference_sigma(plain, gen):
    x = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    sigma = torch.full((6,), 2.0, dtype=torch.float64)
    expected = reference.climbq_act_quant(x, sigma, torch.zeros_like(sigma), 4, 2.0)
    torch.testing.assert_close(plain.PlainClimbQAct(4, CLASSES)(x), expected, rtol=0, atol=1e-12)


def test_per_sample_sigma_is_the_published_rule(plain):
    labels = torch.tensor([0, 0, 0, 2, 1, 0])  # counts 4, 1, 1: sum of squares 18
    expected = torch.tensor([2 - 4 / 18] * 3 + [2 - 1 / 18, 2 - 1 / 18, 2 - 4 / 18], dtype=torch.float64)
    torch.testing.assert_close(plain.per_sample_sigma(labels, 3, torch.float64), expected, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [2, 4])
def test_plain_climbq_weight_matches_the_reference_forward_and_backward(plain, gen, bits):
    w = (torch.randn(8, 3, 3, 3, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    grad = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    out = plain.PlainClimbQWeight(w.detach(), bits)(w)
    (dw,) = torch.autograd.grad(out, w, grad)
    torch.testing.assert_close(out, reference.climbq_weight_quant(w.detach(), bits), rtol=0, atol=1e-12)
    torch.testing.assert_close(dw, reference.climbq_weight_quant_backward(grad, w.detach(), bits),
                               rtol=1e-10, atol=1e-12)


def test_plain_climbq_weight_channel_scale_is_the_least_squares_fit(plain, gen):
    w = torch.randn(5, 20, generator=gen, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64)[:, None]
    quant = plain.PlainClimbQWeight(w, 4, channel_scale=True)
    wq = reference.climbq_weight_quant(w, 4)
    fit = (w * wq).sum(1) / (wq * wq).sum(1)
    torch.testing.assert_close(quant.scale.data, fit)
    torch.testing.assert_close(quant(w), wq * fit[:, None])


def test_plain_lsq_weight_matches_the_reference_forward_and_backward(plain, gen):
    w = (torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64) * 0.2).requires_grad_()
    grad = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    quant = plain.PlainLSQWeight(w.detach(), bits=4).double()
    quant.step.data.mul_(0.7)  # some weights beyond the range, so the clamped branch is tested too
    out = quant(w)
    dw, dstep = torch.autograd.grad(out, (w, quant.step), grad)
    step = quant.step.detach()
    zero = torch.zeros(6, dtype=torch.int32)
    torch.testing.assert_close(out, reference.fake_quant_affine(w.detach(), step, zero, -8, 7, axis=0))
    ref_dw, ref_dstep, _ = reference.fake_quant_affine_backward(grad, w.detach(), step, zero, -8, 7, axis=0,
                                                                scale_requires_grad=True)
    torch.testing.assert_close(dw, ref_dw)
    torch.testing.assert_close(dstep, ref_dstep)
    assert quant.grad_scale == reference.lsq_grad_scale(4 * 3 * 3, 7)


def test_plain_lsq_act_sets_its_step_from_the_first_batch_then_keeps_it(plain, gen):
    quant = plain.PlainLSQAct(bits=4)
    x = torch.randn(8, 16, generator=gen)
    quant(x)
    assert quant.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7))
    quant(x * 10)
    assert quant.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7))


def _placement(model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """(weight-quantized layers, layers with an input quantizer, BatchNorms with an output quantizer)."""
    weights, inputs, bns = [], [], []
    for name, m in model.named_modules():
        if isinstance(m, (qat.QuantConv2d, qat.QuantLinear)):
            weights.append(name)
            if not isinstance(m.input_quant, nn.Identity):
                inputs.append(name)
        elif isinstance(m, (qat.QuantBatchNorm1d, qat.QuantBatchNorm2d)):
            bns.append(name)
        elif type(m).__name__ == "PlainQuantLayer":
            weights.append(name)
            if not isinstance(m.input_quant, nn.Identity):
                inputs.append(name)
        elif isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.BatchNorm2d | nn.BatchNorm1d):
            bns.append(name)
    return weights, inputs, bns


@pytest.mark.parametrize("method", ["climbq", "lsq"])
@pytest.mark.parametrize("model_name", ["resnet18", "vit"])
def test_plain_quantize_places_quantizers_where_quantize_does(plain, bench, method, model_name):
    torch.manual_seed(0)
    ours = bench.MODELS[model_name].build(32)
    theirs = bench.MODELS[model_name].build(32)
    config = cq.ClimbQConfig(num_classes=CLASSES) if method == "climbq" else cq.LSQConfig()
    cq.quantize_(ours, config)
    plain.plain_quantize_(theirs, method, 4, CLASSES)
    expected = _placement(ours)
    assert expected[0] and _placement(theirs) == expected
    if method == "climbq":  # a learned channel scale exactly where no BatchNorm follows
        library = {n: m.weight_quant.scale is not None for n, m in ours.named_modules() if hasattr(m, "weight_quant")}
        mine = {n: m.weight_quant.scale is not None for n, m in theirs.named_modules() if hasattr(m, "weight_quant")}
        assert mine == library


def test_plain_quantize_rejects_an_unknown_method(plain):
    with pytest.raises(ValueError, match="method must be one of"):
        plain.plain_quantize_(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), "pact")


def _tiny(image_size: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


def _run_tiny(bench, compile: bool, rounds: int = 2):
    bench.MODELS["tiny"] = bench.ModelSpec(_tiny, cpu_image=8, cuda_image=8)
    return bench.run(["tiny"], compile=compile, device="cpu", batch=4, rounds=rounds, steps=2, log=lambda _: None)


def test_every_candidate_is_timed_in_every_round_against_float_eager_and_the_plain_modules(bench):
    results = _run_tiny(bench, compile=False)
    (case, result), = results.items()
    assert case == "QAT step tiny (4, 3, 8, 8) fp32"
    assert result["skipped"] == {}
    candidates = result["candidates"]
    assert list(candidates) == ["float eager", "ClimbQ W4A4 eager", "LSQ W4A4 eager", "plain ClimbQ W4A4 eager",
                                "plain LSQ W4A4 eager", "torch.ao prepare_qat W4A4 eager"]
    assert candidates["float eager"]["vs_float_eager"] == [1.0, 1.0, 1.0]
    for label, c in candidates.items():
        assert c["median_s"] > 0 and len(c["round_s"]) == 2 and c["compile_s"] is None
        assert all(math.isfinite(r) and r > 0 for r in c["vs_float_eager"])
        assert ("vs_plain_eager" in c) == label.startswith(("ClimbQ", "LSQ"))
    assert candidates["ClimbQ W4A4 eager"]["vs_plain_compiled"] is None  # no compiled plain candidate ran

    rows = bench.ledger_rows(bench.ledger.Ledger("cpu", bench.SOURCE, None), results)
    assert [r["candidate"] for r in rows] == list(candidates)
    assert all(r["ratio_vs"] == "float eager" and r["case"] == case for r in rows)
    table = bench.markdown(results, "# title")
    for label in candidates:
        assert f"| {case} | {label} |" in table


def test_ratios_are_taken_within_a_round(bench):
    # The machine slows down 3x over the rounds; within each round the candidate takes 2x float's time.
    times = {"float eager": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0], "ClimbQ W4A4 eager": [2.0, 2.0, 4.0, 4.0, 6.0, 6.0],
             "plain ClimbQ W4A4 eager": [4.0, 4.0, 8.0, 8.0, 12.0, 12.0]}
    per_round = bench.per_round_medians(times, rounds=3, steps=2)
    assert per_round["float eager"] == [1.0, 2.0, 3.0]
    summary = bench.summarize(per_round, {})
    assert summary["ClimbQ W4A4 eager"]["vs_float_eager"] == [0.5, 0.5, 0.5]
    assert summary["ClimbQ W4A4 eager"]["vs_plain_eager"] == [2.0, 2.0, 2.0]
    assert summary["ClimbQ W4A4 eager"]["median_s"] == 4.0


def test_plan_has_compiled_candidates_only_with_compile(bench):
    labels = [label for label, _, _ in bench.candidate_plan(compile=True)]
    assert labels[0] == "float eager" and len(labels) == 11
    assert sum(label.endswith("compiled") for label in labels) == 5
    assert not any(label.endswith("compiled") for label, _, _ in bench.candidate_plan(compile=False))


@pytest.mark.slow
def test_compiled_candidates_are_warmed_up_and_timed(bench):
    results = _run_tiny(bench, compile=True, rounds=1)
    result = next(iter(results.values()))
    assert result["skipped"] == {}
    candidates = result["candidates"]
    for method in ("float", "ClimbQ W4A4", "LSQ W4A4", "plain ClimbQ W4A4", "plain LSQ W4A4"):
        assert candidates[f"{method} compiled"]["compile_s"] > 0
    assert candidates["ClimbQ W4A4 compiled"]["vs_plain_compiled"] is not None

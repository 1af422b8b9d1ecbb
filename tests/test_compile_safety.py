"""Argument checks under torch.compile (checks.py): Python numbers that change between calls
trace as symbolic floats without graph breaks or per-value recompilation, and labels out of
range are never silently read as another class in a compiled graph (algorithms.md §0, §1a)."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import climbq_kernels as cq
from climbq_kernels import checks

NUM_CLASSES = 3
VALUES = (0.75, 2.0, 3.5)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _case(gen):
    x = torch.randn(4, 3, 5, 5, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (4,), generator=gen)
    bits = torch.randint(1, 9, (4,), generator=gen)
    return x, labels, bits


CASES = {
    "act_range": lambda x, labels, bits, v: cq.climbq_act_quant(x, labels, num_classes=NUM_CLASSES, act_range=v),
    "act_range relu inference": lambda x, labels, bits, v: cq.climbq_act_quant(x, bits=3, act_range=v, relu=True),
    "sigma inference": lambda x, labels, bits, v: cq.climbq_act_quant(x, bits=3, sigma=v),
    "mu inference": lambda x, labels, bits, v: cq.climbq_act_quant(x, bits=3, mu=v - 2.0),
    "sigma codes": lambda x, labels, bits, v: cq.climbq_act_codes(x, bits=3, sigma=v),
    "clip": lambda x, labels, bits, v: cq.fake_quant_per_sample_bits(x.relu(), bits, v),
}


@pytest.mark.parametrize("name", list(CASES))
def test_changing_float_matches_eager_without_recompiling_per_value(name, gen):
    """The first call specialises the float; the second makes it symbolic (dynamo's automatic
    dynamic); the third runs that graph again, without compiling."""
    x, labels, bits = _case(gen)
    fn = CASES[name]
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    compilations = []
    for value in VALUES:
        torch.testing.assert_close(compiled(x, labels, bits, value), fn(x, labels, bits, value))
        compilations.append(counter.frame_count)
    assert compilations[2] == compilations[1]


def test_dynamic_act_range_compiles_once_and_differentiates_like_eager(gen):
    x, labels, _ = _case(gen)
    scale = (torch.rand(3, generator=gen) + 0.5).requires_grad_()

    def step(x, act_range):
        out = cq.climbq_act_quant(x, labels, num_classes=NUM_CLASSES, act_range=act_range, bn_scale=scale, relu=True)
        return (out * out).mean()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=counter)
    compilations = []
    for value in VALUES:
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        eager = step(xe, value)
        got = compiled(xc, value)
        torch.testing.assert_close(got, eager)
        for g_got, g_eager in zip(torch.autograd.grad(got, (xc, scale)), torch.autograd.grad(eager, (xe, scale)),
                                  strict=True):
            torch.testing.assert_close(g_got, g_eager)
        compilations.append(counter.frame_count)
    assert compilations[0] == compilations[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["act_range", "sigma inference", "clip"])
def test_changing_float_with_inductor(name, gen):
    x, labels, bits = _case(gen)
    fn = CASES[name]
    compiled = torch.compile(fn, fullgraph=True)
    for value in VALUES:
        torch.testing.assert_close(compiled(x, labels, bits, value), fn(x, labels, bits, value))


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_bad_value_of_a_symbolic_float_is_refused(bad, gen):
    """Once act_range is symbolic, its range test is a guard: a bad value retraces and the
    check raises (reported by dynamo as Unsupported with fullgraph=True)."""
    x, labels, bits = _case(gen)
    compiled = torch.compile(CASES["act_range"], fullgraph=True, backend="aot_eager")
    for value in VALUES[:2]:
        compiled(x, labels, bits, value)
    with pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match="act_range must be finite and > 0"):
        compiled(x, labels, bits, bad)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf"), -float("inf")])
def test_concrete_numbers_are_checked_on_the_host(bad):
    with pytest.raises(ValueError, match="act_range must be finite and > 0"):
        checks.check_positive_float("act_range", bad)
    if bad in (-1.0, 0.0):
        assert checks.check_finite_number("mu", bad) == bad
    else:
        with pytest.raises(ValueError, match="mu must be finite"):
            checks.check_finite_number("mu", bad)
    with pytest.raises(TypeError, match="sigma must be a number"):
        checks.check_positive_float("sigma", True)
    assert checks.check_positive_float("sigma", 2) == 2.0 and not checks.is_symbolic(2.0)


# --- labels out of range with a caller-given sigma table --------------------------------------

SIGMA = torch.tensor([0.5, 1.0, 4.0])


def _with_table(x, labels, relu=False):
    return cq.climbq_act_quant(x, labels, sigma=SIGMA, bits=4, relu=relu)


def test_label_minus_one_raises_eagerly(gen):
    x, _, _ = _case(gen)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        _with_table(x, torch.tensor([0, 1, 2, -1]))


def test_label_minus_one_raises_in_a_compiled_graph_on_cpu(gen):
    x, labels, _ = _case(gen)
    compiled = torch.compile(_with_table, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, labels), _with_table(x, labels))
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 3\)"):
        compiled(x, torch.tensor([0, 1, 2, -1]))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bad_label", [-1, 3, 7])
def test_label_out_of_range_poisons_its_sample_where_no_assert_can_run(bad_label, relu, gen, monkeypatch):
    """The CUDA path (no device-side assert), forced on CPU tensors: the sample with the bad
    label comes out NaN, not quantized with class K-1's (or any) sigma; the others as eager."""
    monkeypatch.setattr(checks, "device_assert_is_safe", lambda t: False)
    x, _, _ = _case(gen)
    labels = torch.tensor([0, 1, 2, bad_label])
    compiled = torch.compile(_with_table, fullgraph=True, backend="aot_eager")
    out = compiled(x, labels, relu)
    assert bool(out[3].isnan().all())
    torch.testing.assert_close(out[:3], _with_table(x[:3], labels[:3], relu))
    clamped = _with_table(x, labels.clamp(0, NUM_CLASSES - 1), relu)
    assert not torch.equal(out[3], clamped[3])


def test_label_poison_keeps_the_compiled_graph_whole(gen):
    x, labels, _ = _case(gen)
    explanation = torch._dynamo.explain(_with_table)(x, labels)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

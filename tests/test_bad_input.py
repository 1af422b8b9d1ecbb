"""Bad input to the public API: a clear TypeError/ValueError naming the argument, nothing mutated."""

import pytest
import torch

import climbq_kernels as cq

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS


@pytest.fixture
def batch(gen):
    return torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("labels,error,match", [
    (torch.tensor([0, 1, 3, 2]), ValueError, r"labels must lie in \[0, 3\)"),
    (torch.tensor([0, -1, 2, 2]), ValueError, r"labels must lie in \[0, 3\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"labels must have shape \(4,\)"),
    (torch.tensor([0.0, 1.0, 2.0, 1.0]), TypeError, "labels must be an integer tensor"),
    ([0, 1, 2, 1], TypeError, "labels must be a torch.Tensor"),
])
def test_act_quant_rejects_bad_labels(backend, device, batch, labels, error, match):
    x, _ = batch
    with cq.use_backend(backend), pytest.raises(error, match=match):
        cq.climbq_act_quant(x.to(device), labels.to(device) if isinstance(labels, torch.Tensor) else labels,
                            num_classes=3)
        cq.raise_pending_label_errors(wait=True)  # CUDA labels are range-checked without a sync


@pytest.mark.parametrize("bits,error", [(0, ValueError), (17, ValueError), (31, ValueError), (-4, ValueError),
                                        (4.0, TypeError), (True, TypeError)])
def test_bit_widths_outside_1_to_16_or_32_are_rejected(batch, bits, error):
    x, labels = batch
    with pytest.raises(error, match="bits must"):
        cq.climbq_act_quant(x, labels, num_classes=3, bits=bits)
    with pytest.raises(error, match="bits must"):
        cq.climbq_weight_quant(x, bits=bits)


def test_non_floating_inputs_are_rejected(batch):
    _, labels = batch
    ints = torch.arange(24).reshape(4, 6)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        cq.climbq_act_quant(ints, labels, num_classes=3)
    with pytest.raises(TypeError, match="w must be a floating tensor"):
        cq.climbq_weight_quant(ints)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        cq.fake_quant(ints, 0.1, 0, 0, 255)


def test_weight_quant_needs_two_elements_and_spread():
    with pytest.raises(ValueError, match="w must have at least 2 elements"):
        cq.climbq_weight_quant(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="w"):
        cq.climbq_weight_quant(torch.full((3, 3), 0.25))


def test_act_quant_argument_checks(batch):
    x, labels = batch
    with pytest.raises(ValueError, match="num_classes is required"):
        cq.climbq_act_quant(x, labels)
    with pytest.raises(ValueError, match=r"sigma must have shape \(3,\)"):
        cq.climbq_act_quant(x, labels, sigma=torch.ones(4), num_classes=3)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        cq.climbq_act_quant(x, labels, sigma=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="sigma must be a number when labels is None"):
        cq.climbq_act_quant(x, sigma=torch.ones(3))
    with pytest.raises(ValueError, match="act_range must be finite and > 0"):
        cq.climbq_act_quant(x, labels, num_classes=3, act_range=-1.0)
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        cq.climbq_act_quant(torch.tensor(1.0))


def test_fake_quant_argument_checks(batch):
    x, _ = batch
    with pytest.raises(ValueError, match="quant_min must be < quant_max"):
        cq.fake_quant(x, 0.1, 0, 5, 5)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        cq.fake_quant(x, -0.1, 0, 0, 255)
    with pytest.raises(ValueError, match=r"scale and zero_point of shape \(6,\)"):
        cq.fake_quant(x, torch.ones(4), torch.zeros(4, dtype=torch.int64), 0, 255, axis=1)
    with pytest.raises(ValueError, match="axis must be an int"):
        cq.fake_quant(x, torch.ones(6), torch.zeros(6, dtype=torch.int64), 0, 255, axis=2)


def test_mismatched_devices_are_named(batch):
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    x, labels = batch
    with pytest.raises(ValueError, match="one device"):
        cq.climbq_act_quant(x.cuda(), labels, num_classes=3)


def test_homovar_loss_argument_checks(gen):
    features, logits = torch.randn(6, 5, generator=gen), torch.randn(6, 3, generator=gen)
    labels, counts = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([50, 20, 5])
    with pytest.raises(ValueError, match=r"class_counts must have shape \(3,\)"):
        cq.homovar_loss(features, logits, labels, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels must lie"):
        cq.homovar_loss(features, logits, torch.tensor([0, 1, 2, 3, 1, 2]), counts)
    with pytest.raises(ValueError, match="features must be"):
        cq.homovar_loss(features[:4], logits, labels, counts)
    with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
        cq.homovar_loss(features, logits, labels, counts, alpha=1.5)


def test_deferred_label_check_raises_at_the_next_call(monkeypatch, gen):
    """The no-sync path CUDA labels take, forced on CPU tensors: clamp now, raise at the next call."""
    from climbq_kernels import checks

    monkeypatch.setattr(checks, "label_checks_are_synchronous", lambda labels: False)
    x = torch.randn(4, 6, generator=gen)
    good, bad = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 7, 2, -1])
    cq.climbq_act_quant(x, good, num_classes=3)
    out = cq.climbq_act_quant(x, bad, num_classes=3)  # no error yet, and no out-of-bounds read
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*earlier call"):
        cq.climbq_act_quant(x, good, num_classes=3)
    cq.climbq_act_quant(x, good, num_classes=3)  # the error is reported once
    cq.climbq_act_quant(x, bad, num_classes=3)
    with pytest.raises(ValueError, match="earlier call"):
        checks.raise_pending_label_errors(wait=True)


def test_int4_weight_refuses_a_group_size_that_is_not_an_int(gen):
    qweight = cq.quantize_int4(torch.randn(4, 64, generator=gen), group_size=32)
    for bad in (32.9, None, "32", True):
        with pytest.raises(TypeError, match="group_size must be an int"):
            cq.Int4Weight(qweight.packed, qweight.scales, qweight.zeros, bad)


@pytest.mark.parametrize("argument,value", [("stride", 0), ("stride", (1, -1)), ("dilation", 0), ("padding", -1),
                                            ("stride", 1.5), ("kernel_size", 0)])
def test_int4_conv_refuses_bad_geometry_at_construction(argument, value):
    kwargs = {"kernel_size": 3, argument: value}
    with pytest.raises(ValueError, match=f"{argument} must be an int or a pair of ints"):
        cq.nn.Int4Conv2d(4, 8, group_size=None, **kwargs)


def test_class_tables_refuse_a_missing_num_classes(batch):
    _, labels = batch
    for bad, error in ((None, TypeError), (0, ValueError), (2.0, TypeError)):
        with pytest.raises(error, match="num_classes"):
            cq.reference.class_sigma(labels, bad)


@pytest.mark.parametrize("argument,value,error", [("alpha", "0.05", TypeError), ("alpha", 1.0, ValueError),
                                                  ("beta0", None, TypeError), ("beta0", 0.0, ValueError)])
def test_homovar_loss_names_a_bad_alpha_or_beta0(argument, value, error, gen):
    features, logits = torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)
    labels = torch.randint(0, 3, (8,), generator=gen)
    with pytest.raises(error, match=argument):
        cq.homovar_loss(features, logits, labels, torch.tensor([10, 5, 2]), **{argument: value})


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_fractional_python_zero_point_is_kept_not_truncated(backend, device, gen):
    x = torch.randn(5, 7, generator=gen).to(device)
    with cq.use_backend(backend):
        out = cq.fake_quant(x, 0.1, 0.5, -8, 7)
    expected = cq.reference.fake_quant_affine(x.double(), 0.1, 0.5, -8, 7).float()
    truncated = cq.reference.fake_quant_affine(x.double(), 0.1, 0, -8, 7).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(out, truncated)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_every_backend_refuses_an_infinite_scale_and_an_inexact_code_range(backend, device, batch):
    """The checks live in the public function, which every backend's call goes through."""
    x = batch[0].to(device)
    with cq.use_backend(backend):
        with pytest.raises(ValueError, match="scale must be finite and > 0"):
            cq.fake_quant(x, float("inf"), 0, 0, 255)
        with pytest.raises(ValueError, match=r"must lie in \[-2\*\*24, 2\*\*24\]"):
            cq.fake_quant(x, 0.1, 0, 0, 2**25)
        with pytest.raises(TypeError, match="quant_max must be an int"):
            cq.fake_quant(x, 0.1, 0, 0, 255.0)


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
@pytest.mark.parametrize("table", ["scales", "zeros"])
def test_int4_layers_refuse_a_table_replaced_after_construction(table, backend, device, gen):
    """A buffer swapped for one of another shape is refused by every kernel backend, never read
    past its end."""
    layer = cq.nn.Int4Linear.from_linear(torch.nn.Linear(64, 8), group_size=32).to(device)
    setattr(layer, table, torch.ones(8, 1, device=device))
    x = torch.randn(3, 64, generator=gen).to(device)
    with cq.use_backend(backend), pytest.raises(ValueError, match=f"{table} must .*shape"):
        layer(x)


def test_int4_packing_of_weights_near_the_float32_limit_stays_finite():
    w = torch.tensor([[3e38, -3e38] * 16, [1.0, -2.0] * 16])
    qweight = cq.quantize_int4(w, group_size=32)
    restored = qweight.dequantize()
    assert torch.isfinite(restored).all()
    assert torch.allclose(restored[0], w[0], rtol=0.07)  # half a step of (6e38 / 15) at most


@pytest.mark.parametrize("backend", ["cpu", "reference"] + (["cuda"] if torch.cuda.is_available() else []))
def test_int4_packing_runs_under_any_forced_backend(backend, gen):
    """quantize_int4 has no kernel (a one-time packing step): a forced backend does not refuse it."""
    layer = torch.nn.Linear(64, 8)
    with cq.use_backend(backend):
        served = cq.nn.Int4Linear.from_linear(layer, group_size=32)
    assert served.qweight.shape == (8, 64)


def test_int4_conversion_refuses_a_non_finite_bias():
    layer = torch.nn.Linear(64, 8)
    with torch.no_grad():
        layer.bias[3] = float("nan")
    with pytest.raises(ValueError, match="bias"):
        cq.nn.Int4Linear.from_linear(layer, group_size=32)
    with pytest.raises(ValueError, match="bias"):
        cq.convert_int4(torch.nn.Sequential(layer))


@pytest.mark.parametrize("where", ["all", "one"])
def test_homovar_loss_is_nan_when_features_are_not_finite(where, gen):
    features, logits = torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (8,), generator=gen)
    if where == "all":
        features.fill_(float("nan"))
    else:
        features[2, 1] = float("inf")
    loss = cq.homovar_loss(features, logits, labels, torch.tensor([10, 5, 2]))
    assert torch.isnan(loss)
    assert torch.isfinite(cq.homovar_loss(torch.randn(8, 4, generator=gen), logits, labels, torch.tensor([10, 5, 2])))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_every_backend_refuses_a_sigma_table_that_is_not_finite_and_positive(bad, backend, device, batch):
    x, labels = batch
    sigma = torch.tensor([1.0, bad, 2.0], device=device)
    with cq.use_backend(backend), pytest.raises(ValueError, match="sigma must be finite and > 0"):
        cq.climbq_act_quant(x.to(device), labels.to(device), num_classes=3, sigma=sigma)


def test_a_float64_input_gets_the_float64_default_sigma_table(batch):
    x, labels = batch
    x = x.double()
    sigma = cq.reference.class_sigma(labels, 3, torch.float64)
    expected = cq.reference.climbq_act_quant(x, sigma[labels], torch.zeros(4, dtype=torch.float64), 4, 2.0)
    assert torch.equal(cq.climbq_act_quant(x, labels, num_classes=3, bits=4, act_range=2.0), expected)


def test_meta_tensors_are_named_not_read():
    x = torch.randn(4, 6, device="meta")
    for call in (lambda: cq.fake_quant(x, 0.1, 0, -8, 7), lambda: cq.climbq_act_quant(x),
                 lambda: cq.climbq_weight_quant(x), lambda: cq.quantize_int4(torch.randn(4, 64, device="meta"), 32)):
        with pytest.raises(ValueError, match="(x|w) is a meta tensor"):
            call()


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_a_nan_input_makes_the_lsq_step_gradient_nan(backend, device, gen):
    """algorithms.md §1e: documented, unlike torch's learnable op, which returns a finite gradient."""
    x = torch.randn(4, 6, generator=gen).to(device)
    x[1, 2] = float("nan")
    x.requires_grad_()
    step = torch.tensor(0.1, device=device, requires_grad=True)
    with cq.use_backend(backend):
        out = cq.fake_quant(x, step, 0, -8, 7)
    out.sum().backward()
    assert torch.isnan(step.grad)
    assert out[1, 2] == -8 * 0.1  # the NaN code goes to quant_min (§1e)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_backend_refuses_a_non_finite_weight_by_name(bad, backend, device, gen):
    w = torch.randn(4, 6, generator=gen)
    w[2, 3] = bad
    with cq.use_backend(backend), pytest.raises(ValueError, match="w must be finite"):
        cq.climbq_weight_quant(w.to(device), bits=4)

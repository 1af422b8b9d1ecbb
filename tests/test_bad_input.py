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
    with pytest.raises(ValueError, match="sigma must be > 0"):
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
    with pytest.raises(ValueError, match="scale must be > 0"):
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
    with pytest.raises(ValueError, match="alpha must be in"):
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

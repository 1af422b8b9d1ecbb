"""The ops' eager twins (climbq_kernels/ops/_eager.py) against the custom ops themselves: the
same outputs and gradients, bit for bit, on every kernel backend; the custom op wherever
torch.compile traces."""

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import ops

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu"), *KERNEL_BACKENDS]


def _int4_tables(device, gen):
    qweight = cq.quantize_int4(torch.randn(9, 64, generator=gen), 32).to(device)
    return qweight.packed, qweight.scales, qweight.zeros


def _cases(device, gen):
    """(op, eager twin, args) with fresh random floating inputs that require grad."""
    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_()

    labels = torch.tensor([0, 2, 1, 2, 0, 1, 1], device=device)
    return {
        "class_stats": (ops.class_stats, ops.class_stats_eager, (leaf(7, 5), labels, 3)),
        "climbq_act_fused": (ops.climbq_act_fused, ops.climbq_act_fused_eager,
                             (leaf(4, 3, 5), leaf(4).detach().abs().add(0.5).requires_grad_(), leaf(4, scale=0.1),
                              None, leaf(3).detach().add(1).requires_grad_(), leaf(3), 4, 2.0, True)),
        "climbq_weight_quant": (ops.climbq_weight_quant, ops.climbq_weight_quant_eager, (leaf(6, 9), 3)),
        "fake_quant_affine": (ops.fake_quant_affine, ops.fake_quant_affine_eager,
                              (leaf(5, 4), torch.full((4,), 0.3, device=device).requires_grad_(),
                               torch.tensor([0, 1, -1, 2], device=device), -8, 7, 1)),
        "fake_quant_per_sample_bits": (ops.fake_quant_per_sample_bits, ops.fake_quant_per_sample_bits_eager,
                                       (leaf(3, 8), torch.tensor([2, 4, 8], device=device),
                                        torch.tensor(1.5, device=device).requires_grad_())),
        "int4_matmul": (ops.int4_matmul, ops.int4_matmul_eager, (leaf(3, 64), *_int4_tables(device, gen), 32, leaf(9))),
    }


def _outputs_and_grads(fn, args, gen):
    out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    floating = [o for o in outs if o.is_floating_point()]
    loss = sum((o * torch.randn(o.shape, generator=gen).to(o.device, o.dtype)).sum() for o in floating)
    wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return outs, torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("name", ["class_stats", "climbq_act_fused", "climbq_weight_quant", "fake_quant_affine",
                                  "fake_quant_per_sample_bits", "int4_matmul"])
def test_eager_twin_matches_the_custom_op(name, backend, device, gen):
    op, twin, args = _cases(device, gen)[name]
    with cq.use_backend(backend):
        expected = _outputs_and_grads(op, args, torch.Generator().manual_seed(1))
        got = _outputs_and_grads(twin, args, torch.Generator().manual_seed(1))
    for a, b in zip((*expected[0], *expected[1]), (*got[0], *got[1]), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_eager_twin_skips_the_custom_op_only_in_plain_eager_mode(gen):
    op, twin, args = _cases("cpu", gen)["climbq_weight_quant"]
    assert type(twin(*args).grad_fn).__name__ == "climbq_weight_quant_eagerBackward"
    op_node = type(op(*args).grad_fn).__name__
    assert "climbq_weight_quant" in op_node and "eager" not in op_node
    with torch.no_grad():
        assert torch.equal(twin(*args), op(*args))
    seen = []

    def traced(w):
        seen.append(torch.compiler.is_compiling())
        return twin(w, 3)

    compiled = torch.compile(traced, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args[0]), op(*args))
    assert seen == [True]

"""INT4 packed-weight matmul (algorithms.md §6) on every backend against the float64 dequantize-then-matmul
reference: the error rule in every dtype, batch sizes from GEMV to GEMM, odd out_features, every
group size, leading batch dims, bias, and inputs left untouched. Kernel-specific paths are
tested beside each kernel (test_int4_triton.py, test_int4_cuda.py, the CPU ISAs below)."""

import os
import subprocess
import sys

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.testing import assert_error_rule

from .conftest import KERNEL_BACKENDS

ALL_BACKENDS = [("reference", "cpu")] + KERNEL_BACKENDS
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BATCHES = [1, 2, 3, 7, 16, 33, 128, 1024]
"""GEMV sizes, the CPU fused tiles' remainders, the dequantize-then-GEMM sizes, a large batch."""
GROUP_SIZES = [32, 64, 128, 256, None]


def _weight(out_features, in_features, group_size, gen, device):
    w = torch.randn(out_features, in_features, generator=gen) * 0.05 + 0.01
    return cq.quantize_int4(w, group_size).to(device)


def _check(backend, x, qw, bias):
    x_before = x.clone()
    with cq.use_backend(backend):
        got = cq.int4_matmul(x, qw, bias)
    assert torch.equal(x, x_before), "int4_matmul changed its input"
    assert got.dtype == x.dtype and got.shape == (*x.shape[:-1], qw.shape[0]) and got.device == x.device
    args = (qw.packed.cpu(), qw.scales.cpu(), qw.zeros.cpu(), qw.group_size)
    ref64 = reference.int4_matmul(x.cpu().double(), *args, None if bias is None else bias.cpu().double())
    ref_lowp = reference.int4_matmul(x.cpu(), *args, None if bias is None else bias.cpu())
    assert_error_rule(got.cpu(), ref64, ref_lowp)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", BATCHES)
def test_every_batch_size(backend, device, dtype, batch, gen):
    qw = _weight(45, 256, 64, gen, device)
    x = torch.randn(batch, 256, generator=gen).to(device, dtype)
    bias = torch.randn(45, generator=gen).to(device, dtype) if batch % 2 else None
    _check(backend, x, qw, bias)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group_size", GROUP_SIZES, ids=str)
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_every_group_size(backend, device, dtype, group_size, batch, gen):
    qw = _weight(19, 512, group_size, gen, device)
    _check(backend, torch.randn(batch, 512, generator=gen).to(device, dtype), qw, None)


CALLS = 8


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_features", [1, 9, 27])
@pytest.mark.parametrize("in_features,group_size", [(128, 128), (384, 128), (1024, 256), (640, None)])
def test_single_row_of_whole_128_feature_groups(backend, device, dtype, out_features, in_features, group_size, gen):
    """Batch 1 with groups of whole 128-feature blocks: the CPU's word tiles (AVX-512), whose
    tiles take rows N // 8 apart and leave N % 8 rows to single-row tiles. CALLS calls of one row
    each, held to the error rule together (one output is too few to measure a mean error)."""
    qw = _weight(out_features, in_features, group_size, gen, device)
    xs = torch.randn(CALLS, 1, in_features, generator=gen).to(device, dtype)
    with cq.use_backend(backend):
        got = torch.cat([cq.int4_matmul(x, qw) for x in xs])
    args = (qw.packed.cpu(), qw.scales.cpu(), qw.zeros.cpu(), qw.group_size)
    rows = xs.reshape(CALLS, in_features).cpu()
    assert_error_rule(got.cpu(), reference.int4_matmul(rows.double(), *args), reference.int4_matmul(rows, *args))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("in_features", [2, 18, 94, 1022])
@pytest.mark.parametrize("batch", [1, 6, 20])
def test_one_group_per_row_of_any_even_width(backend, device, in_features, batch, gen):
    """g = K need not be a multiple of 32: the kernels' tails past the last whole block."""
    qw = _weight(13, in_features, None, gen, device)
    _check(backend, torch.randn(batch, in_features, generator=gen).to(device), qw, None)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("lead", [(), (4, 3), (2, 1, 5)], ids=str)
def test_leading_batch_dims_and_bias(backend, device, lead, gen):
    qw = _weight(33, 128, 32, gen, device)
    x = torch.randn(*lead, 128, generator=gen).to(device) if lead else torch.randn(128, generator=gen).to(device)
    _check(backend, x, qw, torch.randn(33, generator=gen).to(device))


def _strided(t, gen):
    """t's values in a non-contiguous view: every other column of a tensor twice as wide."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., 1::2] = torch.randint(0, 255, wide[..., 1::2].shape, generator=gen).to(t.dtype)  # never read
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_non_contiguous_operands(backend, device, dtype, batch, gen):
    """Strided x, packed codes, scales, zeros and bias (the op passes them on as they are: every
    backend makes its own contiguous copies), and a transposed x."""
    qw = _weight(45, 256, 64, gen, device)
    x = torch.randn(batch, 256, generator=gen).to(device, dtype)
    bias = torch.randn(45, generator=gen).to(device, dtype)
    strided = cq.Int4Weight(_strided(qw.packed, gen), _strided(qw.scales, gen), _strided(qw.zeros, gen),
                            qw.group_size)
    _check(backend, _strided(x, gen), strided, _strided(bias, gen))
    _check(backend, x.t().contiguous().t(), qw, None)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_empty_batch(backend, device, gen):
    qw = _weight(9, 64, 32, gen, device)
    with cq.use_backend(backend):
        got = cq.int4_matmul(torch.empty(0, 64, device=device), qw)
    assert got.shape == (0, 9)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_large_activations_accumulate_in_float32(backend, device, gen):
    """fp16 activations whose products would overflow fp16 partial sums stay finite and exact."""
    qw = _weight(8, 4096, 128, gen, device)
    x = (torch.randn(3, 4096, generator=gen) * 300).to(device, torch.float16)
    _check(backend, x, qw, None)


# --- the C++ kernels on every compiled instruction set ---------------------------------------

_ISA_ORDER = ["DEFAULT", "AVX2", "AVX512"]
_ISA_SCRIPT = """
import sys, torch
import climbq_kernels._native as native
module = native.require()
print(module.build_info()["cpu_isa"])
cases, path = torch.load(sys.argv[1])
ops = torch.ops.climbq_native
torch.save([ops.int4_matmul(*case) for case in cases], path)
"""


def _isas_to_test():
    if not any(backend == "cpu" for backend, _ in KERNEL_BACKENDS):
        return []
    from climbq_kernels import _native
    compiled = _native.require().build_info()["cpu_isas"].split(",")
    here = torch.backends.cpu.get_cpu_capability()
    usable = _ISA_ORDER[: _ISA_ORDER.index(here) + 1] if here in _ISA_ORDER else ["DEFAULT"]
    return [isa for isa in _ISA_ORDER if isa in compiled and isa in usable]


@pytest.mark.slow
@pytest.mark.parametrize("isa", _isas_to_test())
def test_each_cpu_instruction_set(isa, tmp_path, gen):
    """Every ISA variant in a fresh process (ATen reads ATEN_CPU_CAPABILITY once): fused tiles
    with remainders, the one-group tail, AVX-512's word tiles at batch 1 (g = 128, one group of
    384) and the dequantize-then-GEMM path (from 80 rows; at 2049 x 4096 in three blocks of W
    rows, the last one row)."""
    cases = []
    for batch, out_features, in_features, group_size in [(1, 21, 256, 32), (1, 27, 512, 128), (1, 11, 384, None),
                                                         (3, 10, 96, None), (6, 9, 1022, None),
                                                         (9, 7, 512, 128), (40, 13, 256, 256), (79, 5, 64, 32),
                                                         (80, 9, 256, 64), (129, 11, 1022, None),
                                                         (81, 2049, 4096, 128)]:
        qw = _weight(out_features, in_features, group_size, gen, "cpu")
        for dtype in DTYPES:
            x = torch.randn(batch, in_features, generator=gen).to(dtype)
            bias = torch.randn(out_features, generator=gen).to(dtype)
            cases.append((x, qw.packed, qw.scales, qw.zeros, qw.group_size, bias))
    inputs, outputs = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save((cases, str(outputs)), inputs)
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    run = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(inputs)], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == isa
    for (x, packed, scales, zeros, group_size, bias), got in zip(cases, torch.load(outputs), strict=True):
        ref64 = reference.int4_matmul(x.double(), packed, scales, zeros, group_size, bias.double())
        assert_error_rule(got, ref64, reference.int4_matmul(x, packed, scales, zeros, group_size, bias))


# --- the native op's own checks (a direct torch.ops call skips the Python ones) -------------

def _native_case():
    qw = cq.quantize_int4(torch.randn(8, 64), 32)
    return torch.randn(2, 64), qw.packed, qw.scales, qw.zeros, 32, None


@pytest.mark.parametrize("change,match", [
    (lambda a: (a[0].double(), *a[1:]), "x must be float32, float16 or bfloat16"),
    (lambda a: (a[0][:, :32], *a[1:]), "x's last dimension must be in_features = 64"),
    (lambda a: (a[0], a[1].to(torch.int8), *a[2:]), "packed must be uint8"),
    (lambda a: (a[0], a[1], a[2][:, :1], *a[3:]), r"scales must have shape \(8, 2\)"),
    (lambda a: (a[0], a[1], a[2], a[3].double(), *a[4:]), "zeros must be float32"),
    (lambda a: (*a[:4], 48, None), "group_size must be a multiple of 32 dividing in_features 64"),
    (lambda a: (*a[:5], torch.randn(7)), r"bias must have shape \(8,\)"),
    (lambda a: (*a[:5], torch.randn(8).half()), "bias must have x's dtype"),
])
@pytest.mark.parametrize("backend,device", [pair for pair in KERNEL_BACKENDS if pair[0] == "cpu"])
@pytest.mark.parametrize("entry", ["torch.ops", "direct"])
def test_native_op_rejects_bad_arguments(backend, device, change, match, entry):
    from climbq_kernels import _native
    op = _native.require().int4_matmul if entry == "direct" else torch.ops.climbq_native.int4_matmul
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        op(*change(_native_case()))


@pytest.mark.parametrize("backend,device", [pair for pair in KERNEL_BACKENDS if pair[0] == "cpu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_direct_entry_is_the_op(backend, device, dtype, gen):
    """climbq_kernels._C.int4_matmul, which the eager serving path calls, returns what the
    registered op returns, bit for bit, with and without bias."""
    from climbq_kernels import _native
    qw = _weight(13, 256, 64, gen, "cpu")
    for batch in (1, 5):
        x = torch.randn(batch, 256, generator=gen).to(dtype)
        for bias in (None, torch.randn(13, generator=gen).to(dtype)):
            args = (x, qw.packed, qw.scales, qw.zeros, 64, bias)
            assert torch.equal(_native.require().int4_matmul(*args), torch.ops.climbq_native.int4_matmul(*args))


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_serving_path_matches_the_op_and_keeps_gradients(backend, device, gen):
    """Eager calls skip the custom-op layer (ops/_eager.py): without autograd the same result as
    the op, bit for bit; with a gradient needed, the op's autograd formula."""
    from climbq_kernels import ops
    qw = _weight(21, 128, 32, gen, device)
    x = torch.randn(3, 128, generator=gen).to(device)
    with cq.use_backend(backend):
        with torch.no_grad():
            served = cq.int4_matmul(x, qw)
        through_op = ops.int4_matmul(x, qw.packed, qw.scales, qw.zeros, qw.group_size, None)
        x_leaf = x.clone().requires_grad_()
        cq.int4_matmul(x_leaf, qw).sum().backward()
    assert torch.equal(served, through_op)
    torch.testing.assert_close(x_leaf.grad, qw.dequantize().to(device).sum(0).expand_as(x), rtol=1e-5, atol=1e-5)

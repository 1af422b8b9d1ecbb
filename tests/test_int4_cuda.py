"""The CUDA INT4 matmul (csrc/cuda/int4_*.cu, algorithms.md §6) against the float64 reference, by the error
rule: the GEMV for M <= 8 (its 16-byte loop, exact for float32 and with offset codes for 16-bit x,
and its bytewise loop for rows that are not 16-byte aligned), the tensor-core kernel for 16-bit x
up to M = 64 (every split of K), and dequantize + cuBLAS beyond (block by block; dequantization
by 32-bit words or bytes); each path also forced over the others' batch sizes; plus
argument checks and registration.

Tests that run the kernel need a CUDA device and skip only where there is none; the
registration test runs on the CPU.
"""

import os

import pytest
import torch

import climbq_kernels as cq
from climbq_kernels import _native, ops, reference
from climbq_kernels.testing import assert_error_rule

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA device")
OPS = torch.ops.climbq_native

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = [1, 2, 3, 7, 8, 9, 16, 33, 128, 1024]
"""M: every GEMV specialisation edge (1..8) and the cuBLAS path past it."""
# (N, K, group_size): every group size; None is one group per row, whose K need not be a
# multiple of 32 (K = 18, 4094: rows of 9 and 2047 bytes, so the bytewise loop); K = 4096 gives
# the 16-byte loop full chunks per thread; N odd so the last block of rows is partial.
WEIGHTS = [(45, 64, 32), (45, 128, 64), (45, 256, 128), (45, 512, 256), (45, 256, None), (45, 18, None),
           (13, 4094, None), (45, 4096, 32), (45, 4096, 128), (4097, 256, 64)]


def _weight(n, k, group_size, gen):
    return cq.quantize_int4(torch.randn(n, k, generator=gen), group_size).to("cuda")


def _x(lead, k, dtype, gen):
    return torch.randn(*lead, k, generator=gen).to("cuda", dtype)


def _run_cuda(x, qw, bias):
    with cq.use_backend("cuda"):
        return cq.int4_matmul(x, qw, bias)


def assert_matches_reference(got, x, qw, bias):
    """The error rule against the float64 reference, with the reference in x's dtype on the GPU
    (the same cuBLAS and TF32 setting as the kernel's large-M path) as the yardstick."""
    assert got.dtype == x.dtype and got.device == x.device
    assert got.shape == (*x.shape[:-1], qw.shape[0])
    tables = (qw.packed.cpu(), qw.scales.cpu(), qw.zeros.cpu(), qw.group_size)
    ref64 = reference.int4_matmul(x.double().cpu(), *tables, None if bias is None else bias.double().cpu())
    ref_lowp = reference.int4_matmul(x, qw.packed, qw.scales, qw.zeros, qw.group_size, bias)
    assert_error_rule(got.float().cpu(), ref64, ref_lowp.float().cpu())


@needs_gpu
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,k,group_size", WEIGHTS, ids=str)
@pytest.mark.parametrize("m", ROWS)
def test_matches_float64_reference(m, n, k, group_size, dtype, with_bias, gen):
    qw = _weight(n, k, group_size, gen)
    x = _x((m,), k, dtype, gen)
    bias = torch.randn(n, generator=gen).to("cuda", dtype) if with_bias else None
    assert_matches_reference(_run_cuda(x, qw, bias), x, qw, bias)


@needs_gpu
@pytest.mark.parametrize("block_bytes,n", [(1, 200), (256 * 256 * 4, 4097), (10**12, 300)],
                         ids=["64-row blocks", "256-or-512-row blocks", "one block"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_m_path_dequantizes_block_by_block(block_bytes, n, dtype, monkeypatch, gen):
    """M > 8: W dequantized a block of output features at a time, each GEMM into its columns of
    y: blocks of 64 rows (the smallest), of 256 (float32) or 512 rows (a remainder of 1 row at
    N = 4097), and one block."""
    monkeypatch.setenv("CLIMBQ_INT4_DEQUANT_BLOCK_BYTES", str(block_bytes))
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", "dequantize")  # 16-bit x at M = 33 would take the MMA
    qw = _weight(n, 256, 64, gen)
    x = _x((33,), 256, dtype, gen)
    bias = torch.randn(n, generator=gen).to("cuda", dtype)
    for b in (None, bias):
        assert_matches_reference(OPS.int4_matmul(x, qw.packed, qw.scales, qw.zeros, 64, b), x, qw, b)


# (N, K, group_size) for the forced-path tests: K = 96 and 160 end in a partial 128-feature k-block
# of the MMA kernel (with one group per row at K = 160: the pipelined kernel's row tables); N = 45,
# 70 and 4097 end in a partial tile of output features. Groups of 32 and 64 give the pipelined
# kernel several groups per k-block (lane tables), 128, 256 and one group per row one (row tables).
PATH_WEIGHTS = [(45, 96, 32), (70, 160, 32), (45, 160, None), (45, 4096, 128), (4097, 256, 64), (45, 256, None),
                (45, 512, 256)]
PATH_ROWS = {"gemv": [1, 3, 8], "mma": [1, 2, 7, 8, 9, 16, 33, 57, 64], "dequantize": [1, 9, 70]}
# Each MMA kernel forced over every batch size (by default: registers up to M = 16, pipelined beyond).
MMA_KERNELS = ["registers", "pipelined"]
PATH_CASES = [(path, kernel, m) for path, rows in PATH_ROWS.items()
              for kernel in (MMA_KERNELS if path == "mma" else [None]) for m in rows]


@needs_gpu
@pytest.mark.parametrize("offset", [0.0, 30.0], ids=["centred", "offset"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n,k,group_size", PATH_WEIGHTS, ids=str)
@pytest.mark.parametrize("path,kernel,m", PATH_CASES)
def test_each_path_matches_float64_reference(path, kernel, m, n, k, group_size, dtype, offset, monkeypatch, gen):
    """CLIMBQ_INT4_CUDA_PATH forces a path over every batch size it takes (CLIMBQ_INT4_MMA_KERNEL
    the MMA path's kernel); "offset" weights sit far from zero (zero points from about -50 to -170),
    where the 16-bit paths' offset codes cancel the most."""
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", path)
    if kernel is not None:
        monkeypatch.setenv("CLIMBQ_INT4_MMA_KERNEL", kernel)
    qw = cq.quantize_int4(torch.randn(n, k, generator=gen) + offset, group_size).to("cuda")
    x = _x((m,), k, dtype, gen)
    bias = torch.randn(n, generator=gen).to("cuda", dtype)
    assert_matches_reference(_run_cuda(x, qw, bias), x, qw, bias)


@needs_gpu
@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("kernel", MMA_KERNELS)
@pytest.mark.parametrize("split_k", [1, 2, 3, 5, 32, 1000])
@pytest.mark.parametrize("m", [4, 33])
def test_mma_split_k(split_k, m, kernel, group_size, monkeypatch, gen):
    """Every split of K's 32 k-blocks (1000: clamped to 32), deterministic run to run; groups of
    64 and 128 (the pipelined kernel's lane and row tables)."""
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", "mma")
    monkeypatch.setenv("CLIMBQ_INT4_MMA_KERNEL", kernel)
    monkeypatch.setenv("CLIMBQ_INT4_MMA_SPLIT_K", str(split_k))
    qw = _weight(200, 4096, group_size, gen)
    x = _x((m,), 4096, torch.bfloat16, gen)
    bias = torch.randn(200, generator=gen).to("cuda", torch.bfloat16)
    got = _run_cuda(x, qw, bias)
    assert_matches_reference(got, x, qw, bias)
    assert torch.equal(got, _run_cuda(x, qw, bias))


@needs_gpu
@pytest.mark.parametrize("threads", [32, 96, 256])
@pytest.mark.parametrize("m,dtype", [(1, torch.bfloat16), (3, torch.float16), (8, torch.float32)], ids=str)
@pytest.mark.parametrize("k,group_size", [(4096, 128), (4094, None)], ids=["chunks", "bytes"])
def test_gemv_threads_per_block_override(threads, m, dtype, k, group_size, monkeypatch, gen):
    """CLIMBQ_INT4_GEMV_THREADS (for benchmarks) sets the GEMV's block: fewer threads than a
    row's units (each thread takes several) or more (some take none), both loops."""
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", "gemv")
    monkeypatch.setenv("CLIMBQ_INT4_GEMV_THREADS", str(threads))
    qw = _weight(45, k, group_size, gen)
    x = _x((m,), k, dtype, gen)
    bias = torch.randn(45, generator=gen).to("cuda", dtype)
    assert_matches_reference(_run_cuda(x, qw, bias), x, qw, bias)


@needs_gpu
@pytest.mark.parametrize("path,m,dtype,k", [
    ("gemv", 9, torch.float16, 64),         # past the GEMV's 8 rows
    ("mma", 4, torch.float32, 64),          # float32 x
    ("mma", 65, torch.bfloat16, 64),        # past the MMA's 64 rows
    ("mma", 4, torch.bfloat16, 18),         # K % 32 != 0
    ("tensor-cores", 4, torch.bfloat16, 64),
])
def test_forced_path_that_does_not_apply_is_an_error(path, m, dtype, k, monkeypatch, gen):
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", path)
    qw = _weight(8, k, None, gen)
    with pytest.raises(ValueError, match=f"CLIMBQ_INT4_CUDA_PATH={path} does not apply"):
        OPS.int4_matmul(_x((m,), k, dtype, gen), qw.packed, qw.scales, qw.zeros, k, None)


@needs_gpu
@pytest.mark.parametrize("name,value,m,dtype,message", [
    ("CLIMBQ_INT4_MMA_SPLIT_K", "-2", 16, torch.bfloat16, "must be a non-negative integer"),
    ("CLIMBQ_INT4_MMA_KERNEL", "fastest", 16, torch.bfloat16, "must be 'registers' or 'pipelined'"),
    ("CLIMBQ_INT4_MMA_KERNEL", "registers-wide", 16, torch.bfloat16, "must be 'registers' or 'pipelined'"),
    ("CLIMBQ_INT4_DEQUANT_BLOCK_BYTES", "lots", 9, torch.float32, "must be a positive byte count"),
    ("CLIMBQ_INT4_GEMV_THREADS", "48", 1, torch.float16, "must be a multiple of 32 from 32 to 256"),
    ("CLIMBQ_INT4_GEMV_THREADS", "512", 1, torch.float16, "must be a multiple of 32 from 32 to 256"),
])
def test_tuning_overrides_are_checked(name, value, m, dtype, message, monkeypatch, gen):
    monkeypatch.setenv(name, value)
    qw = _weight(8, 64, 32, gen)
    with pytest.raises(ValueError, match=f"{name} {message}"):
        OPS.int4_matmul(_x((m,), 64, dtype, gen), qw.packed, qw.scales, qw.zeros, 32, None)


@needs_gpu
@pytest.mark.parametrize("lead", [(2, 3), (1, 1, 8), (3, 5), (2, 0)], ids=str)
def test_leading_dimensions_are_flattened(lead, gen):
    """x (..., K): M is the product of the leading dims (6 and 8: GEMV, 15: cuBLAS, 0: empty)."""
    qw = _weight(45, 256, 64, gen)
    x = _x(lead, 256, torch.float16, gen)
    bias = torch.randn(45, generator=gen).to("cuda", torch.float16)
    got = _run_cuda(x, qw, bias)
    assert got.shape == (*lead, 45)
    if x.numel():
        assert_matches_reference(got, x, qw, bias)


def _misaligned_copy(t, offset_bytes):
    """t's values in a contiguous tensor that starts `offset_bytes` past a 16-byte boundary."""
    itemsize = t.element_size()
    pad = offset_bytes // itemsize
    flat = torch.empty(t.numel() + pad, dtype=t.dtype, device=t.device)
    view = flat[pad:].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.data_ptr() % 16 == offset_bytes
    return view


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 4, 8, 16, 40])
def test_misaligned_storage_takes_the_bytewise_loop(m, dtype, gen):
    """K % 32 == 0 but x or packed not 16-byte aligned: the GEMV's bytewise loop (M <= 8), else
    dequantize + cuBLAS with byte-wise dequantization (packed) instead of the MMA kernel; the error
    rule still holds."""
    qw = _weight(45, 256, 32, gen)
    x = _x((m,), 256, dtype, gen)
    bias = torch.randn(45, generator=gen).to("cuda", dtype)
    x_off = _misaligned_copy(x, 2 * x.element_size())
    packed_off = _misaligned_copy(qw.packed, 3)
    qw_off = cq.Int4Weight(packed_off, qw.scales, qw.zeros, qw.group_size)
    for xs, w in [(x_off, qw), (x, qw_off), (x_off, qw_off)]:
        assert_matches_reference(_run_cuda(xs, w, bias), x, qw, bias)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k,group_size,packed_offset", [
    (4096, 128, 0),  # 32-bit words of codes
    (160, None, 0),  # words, one group per row
    (40, None, 0),   # K % 32 != 0: words
    (256, 32, 4),    # packed 4 bytes past a 16-byte boundary: words
    (256, 32, 3),    # 3 bytes past: bytes
    (18, None, 0),   # K % 8 != 0: bytes
], ids=str)
def test_dequantize_path_reads_words_or_bytes(k, group_size, packed_offset, dtype, monkeypatch, gen):
    """The large-M path's dequantization reads 32-bit words or single bytes of codes by K and the
    packed pointer's alignment; each matches the reference."""
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", "dequantize")
    qw = _weight(45, k, group_size, gen)
    packed = _misaligned_copy(qw.packed, packed_offset) if packed_offset else qw.packed
    x = _x((70,), k, dtype, gen)
    bias = torch.randn(45, generator=gen).to("cuda", dtype)
    got = OPS.int4_matmul(x, packed, qw.scales, qw.zeros, qw.group_size, bias)
    assert_matches_reference(got, x, qw, bias)


@needs_gpu
@pytest.mark.parametrize("m", [3, 40])
def test_inputs_are_not_modified_and_results_repeat(m, gen):
    qw = _weight(45, 4096, 128, gen)
    x = _x((m,), 4096, torch.bfloat16, gen)
    bias = torch.randn(45, generator=gen).to("cuda", torch.bfloat16)
    before = [t.clone() for t in (x, qw.packed, qw.scales, qw.zeros, bias)]
    first = _run_cuda(x, qw, bias)
    second = _run_cuda(x, qw, bias)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, qw.packed, qw.scales, qw.zeros, bias)))
    assert torch.equal(first, second)  # fixed reduction order: deterministic


@needs_gpu
def test_empty_outputs(gen):
    qw = _weight(45, 64, 32, gen)
    assert OPS.int4_matmul(_x((0,), 64, torch.float32, gen), qw.packed, qw.scales, qw.zeros, 32, None).shape == (0, 45)
    empty = cq.quantize_int4(torch.randn(0, 64), 32).to("cuda")
    for m in (1, 20):
        got = OPS.int4_matmul(_x((m,), 64, torch.float32, gen), empty.packed, empty.scales, empty.zeros, 32, None)
        assert got.shape == (m, 0)


@needs_gpu
def test_the_automatic_backend_for_cuda_tensors_has_a_kernel(gen):
    qw = _weight(8, 64, 32, gen)
    x = _x((2,), 64, torch.float16, gen)
    assert "cuda" in ops.KERNELS["int4_matmul"]
    assert_matches_reference(cq.int4_matmul(x, qw), x, qw, None)


def _good_args(gen):
    qw = _weight(6, 64, 32, gen)
    return _x((2,), 64, torch.float32, gen), qw.packed, qw.scales, qw.zeros, 32, None


@needs_gpu
@pytest.mark.parametrize("case,error,match", [
    ("x_float64", TypeError, "x must be float32, float16 or bfloat16"),
    ("packed_int8", TypeError, "packed must be uint8"),
    ("scales_half", TypeError, "scales must be float32"),
    ("bias_dtype", TypeError, "bias must have x's dtype"),
    ("x_wrong_k", ValueError, "x's last dimension must be in_features = 64"),
    ("group_48", ValueError, "group_size must be a multiple of 32 dividing in_features 64"),
    ("group_0", ValueError, "group_size must be"),
    ("zeros_shape", ValueError, r"zeros must have shape \(6, 2\)"),
    ("bias_shape", ValueError, r"bias must have shape \(6,\)"),
    ("packed_on_cpu", ValueError, "x and packed must be on one CUDA device"),
    ("scales_on_cpu", ValueError, "scales must be on x's device"),
    ("bias_on_cpu", ValueError, "bias must be on x's device"),
])
def test_cuda_kernel_checks_its_arguments(case, error, match, gen):
    """The second line of defence (csrc/int4_args.h), for direct torch.ops.climbq_native calls."""
    x, packed, scales, zeros, g, bias = _good_args(gen)
    args = {
        "x_float64": (x.double(), packed, scales, zeros, g, bias),
        "packed_int8": (x, packed.to(torch.int8), scales, zeros, g, bias),
        "scales_half": (x, packed, scales.half(), zeros, g, bias),
        "bias_dtype": (x, packed, scales, zeros, g, torch.zeros(6, device="cuda", dtype=torch.float16)),
        "x_wrong_k": (x[:, :62], packed, scales, zeros, g, bias),
        "group_48": (x, packed, scales, zeros, 48, bias),
        "group_0": (x, packed, scales, zeros, 0, bias),
        "zeros_shape": (x, packed, scales, zeros[:, :1], g, bias),
        "bias_shape": (x, packed, scales, zeros, g, torch.zeros(5, device="cuda")),
        "packed_on_cpu": (x, packed.cpu(), scales, zeros, g, bias),
        "scales_on_cpu": (x, packed, scales.cpu(), zeros, g, bias),
        "bias_on_cpu": (x, packed, scales, zeros, g, torch.zeros(6)),
    }[case]
    with pytest.raises(error, match=match):
        OPS.int4_matmul(*args)


_C = _native.load()


@pytest.mark.skipif(_C is None and os.environ.get("CLIMBQ_REQUIRE_NATIVE") != "1",
                    reason="climbq_kernels._C is not built")
def test_cuda_kernel_is_registered_exactly_when_built_with_cuda():
    """Runs without a GPU: an extension built with CUDA must carry this kernel."""
    assert _C is not None, _native.available()[1]
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("climbq_native::int4_matmul", "CUDA")
    assert has_cuda == _C.build_info()["with_cuda"]

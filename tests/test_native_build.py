"""The native extension `climbq_kernels._C`: it loads, registers `torch.ops.climbq_native`,
reports how it was built, and its kernels compute algorithms.md §1a: the CPU kernels always (each
compiled instruction set in turn), the CUDA kernels where there is a GPU.

The oracle is the formula of docs/algorithms.md in float64, written out below, so that this file checks the
kernels independently of `climbq_kernels.reference`. The kernels compute in float32, so:

- codes q = rint(u N) must equal the float64 codes except where float64 u N lies within
  `U_ERROR_BUDGET * N` of a rounding boundary k + 1/2 (u in [0, 1] is computed with an absolute
  error of a few float32 ulps of 1); there they may differ by exactly one;
- out is A (2q/N - 1) rounded to x's dtype;
- dx follows the flash-attention rule: its worst error is at most twice that of the same
  formula evaluated eagerly in float32 (then rounded to x's dtype), plus a few ulps.
"""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from climbq_kernels import _native
from climbq_kernels.constants import MAX_BITS, MIN_BITS

_C = _native.load()
_LOADED, _WHY = _native.available()
_REQUIRED = os.environ.get("CLIMBQ_REQUIRE_NATIVE") == "1"
"""CI sets CLIMBQ_REQUIRE_NATIVE=1 so that a missing extension fails instead of skipping."""
pytestmark = pytest.mark.skipif(
    not _LOADED and not _REQUIRED,
    reason=f"{_WHY}; build it with: {_native.BUILD_COMMAND}",
)

OPS = torch.ops.climbq_native
_CUDA_READY = _LOADED and _C.built_with_cuda() and torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not _CUDA_READY, reason="needs a CUDA device and an extension built with CUDA"))]
SHAPES = [(1, 1), (3, 5, 7), (2, 3, 17, 33), (64, 1031)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BITS = [1, 2, 4, 8, 16]
ACT_RANGE = 2.0
EPS32 = torch.finfo(torch.float32).eps
U_ERROR_BUDGET = 4 * EPS32
"""Largest absolute error of u = Phi(z) the float32 kernels may make (u lies in [0, 1]). The
AVX2/AVX-512 kernels use ATen's vector erf (Abramowitz-Stegun 7.1.26, |error| <= 1.5e-7) and
were seen to flip codes up to 2.1 eps32 * N from a boundary (DEFAULT, with libm erf: 0.65)."""


# --- the algorithms.md §1a formula in float64 -------------------------------------------------------

def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.double().view((-1,) + (1,) * (like.dim() - 1))


def spec_forward_float64(x, sigma, mu, bits, act_range):
    """(u N, q, out) in float64: u = Phi((x - mu_i) / sigma_i), q = rint(u N),
    out = A (2q/N - 1)."""
    levels = (1 << bits) - 1
    z = (x.double() - _per_sample(mu, x)) / _per_sample(sigma, x)
    u_levels = 0.5 * (1 + torch.erf(z / math.sqrt(2))) * levels
    q = torch.round(u_levels)  # round half to even
    return u_levels, q, act_range * (2 * q / levels - 1)


def spec_backward_float64(grad, x, sigma, mu, act_range):
    """dx = grad * 2A phi(z) / sigma_i, phi the standard normal density."""
    z = (x.double() - _per_sample(mu, x)) / _per_sample(sigma, x)
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return grad.double() * 2 * act_range * phi / _per_sample(sigma, x)


def eager_backward_float32(grad, x, sigma, mu, act_range):
    """The same backward formula in float32 eager PyTorch, rounded to x's dtype."""
    per_sample = (-1,) + (1,) * (x.dim() - 1)
    s, m = sigma.float().view(per_sample), mu.float().view(per_sample)
    z = (x.float() - m) / s
    dx = grad.float() * 2 * act_range * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / s
    return dx.to(x.dtype)


# --- inputs and checks ---------------------------------------------------------------------

def make_case(shape, dtype, gen, device="cpu"):
    """x spread over each sample's own distribution (so every code is exercised), never all
    zero; per-sample sigma in [0.5, 2.5] and mu around 0, float32 (B,); all on `device`."""
    batch, per_sample = shape[0], (-1,) + (1,) * (len(shape) - 1)
    sigma = torch.rand(batch, generator=gen) * 2 + 0.5
    mu = torch.randn(batch, generator=gen) * 0.3
    x = mu.view(per_sample) + sigma.view(per_sample) * 1.5 * torch.randn(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    return tuple(t.to(device) for t in (x.to(dtype), sigma, mu, grad.to(dtype)))


def near_rounding_boundary(u_levels: torch.Tensor, levels: int) -> torch.Tensor:
    """Elements whose float64 u N lies within the float32 error budget of k + 1/2."""
    distance = (u_levels - (torch.floor(u_levels) + 0.5)).abs()
    return distance <= U_ERROR_BUDGET * levels


def assert_forward_matches_spec(out, x, sigma, mu, bits, act_range=ACT_RANGE):
    assert out.device == x.device
    out, x, sigma, mu = (t.cpu() for t in (out, x, sigma, mu))
    levels = (1 << bits) - 1
    u_levels, q_ref, out_ref = spec_forward_float64(x, sigma, mu, bits, act_range)
    tie = near_rounding_boundary(u_levels, levels)
    assert out.dtype == x.dtype and out.shape == x.shape
    eps = torch.finfo(x.dtype).eps
    if x.dtype == torch.float32:
        # float32 outputs hold every level exactly enough to read the code back
        q = torch.round((out.double() / act_range + 1) * levels / 2)
        assert ((q >= 0) & (q <= levels)).all()
        wrong = q != q_ref
        assert not (wrong & ~tie).any(), (
            f"{int((wrong & ~tie).sum())} codes differ from float64 away from rounding boundaries")
        assert ((q - q_ref).abs() <= 1).all(), "a code differs by more than one level"
        levels_out = act_range * (2 * q / levels - 1)
        torch.testing.assert_close(out.double(), levels_out, rtol=0, atol=4 * eps * act_range)
    else:
        # each output is a level rounded to x's dtype; at a boundary, one level either way
        step = 2 * act_range / levels
        atol = eps * act_range
        allowed = torch.where(tie, step + atol, torch.full_like(out_ref, atol))
        err = (out.double() - out_ref).abs()
        assert (err <= allowed).all(), f"max error {err.max().item():.3g} beyond the allowed bound"


def assert_backward_matches_spec(dx, grad, x, sigma, mu, act_range=ACT_RANGE):
    assert dx.device == x.device
    dx, grad, x, sigma, mu = (t.cpu() for t in (dx, grad, x, sigma, mu))
    ref = spec_backward_float64(grad, x, sigma, mu, act_range)
    eager = eager_backward_float32(grad, x, sigma, mu, act_range)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    err = (dx.double() - ref).abs().max().item()
    err_eager = (eager.double() - ref).abs().max().item()
    allowed = 2 * err_eager + 4 * torch.finfo(x.dtype).eps * ref.abs().max().item()
    assert err <= allowed, f"dx max error {err:.3e} > {allowed:.3e} (eager float32: {err_eager:.3e})"


# --- the extension and its registration ----------------------------------------------------

def test_extension_loads():
    assert _LOADED, f"{_WHY}; build it with: {_native.BUILD_COMMAND}"
    assert _native.require() is _C
    assert hasattr(OPS, "climbq_act_quant_forward") and hasattr(OPS, "climbq_act_quant_backward")


@pytest.mark.parametrize("op", ["climbq_act_quant_forward", "climbq_act_quant_backward"])
def test_ops_are_registered_with_their_schemas(op):
    schema = str(getattr(OPS, op).default._schema)
    assert schema.startswith(f"climbq_native::{op}(")
    assert "int bits, float act_range) -> Tensor" in schema
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"climbq_native::{op}", "CPU")
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"climbq_native::{op}", "CUDA")
    assert has_cuda == _C.built_with_cuda()


def test_build_info_is_consistent():
    info = _C.build_info()
    assert info["with_cuda"] == _C.built_with_cuda() == _native.built_with_cuda()
    assert info["cuda_archs"] == _C.cuda_archs() == _native.cuda_archs()
    assert info["torch_version"] == torch.__version__, "built against another torch: rebuild"
    assert info["cpu_isa"] in info["cpu_isas"].split(",")
    if info["with_cuda"]:
        targets = info["cuda_archs"].split(",")
        assert targets and all(t.split("_")[0] in ("sm", "compute") for t in targets), targets
        major = info["cuda_runtime_version"] // 1000
        assert str(major) == torch.version.cuda.split(".")[0], "CUDA toolkit and torch's CUDA differ"
    else:
        assert info["cuda_archs"] == "" and info["cuda_runtime_version"] == 0


def test_built_with_cuda_when_torch_has_cuda_and_cuda_was_not_disabled():
    """CLIMBQ_BUILD_CUDA=1 must give CUDA kernels; auto gives them when torch has CUDA and a
    toolkit is there to build with; 0 never does."""
    setting = _C.build_info()["build_cuda_setting"]
    toolkit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or shutil.which("nvcc")
    if setting == "0" or not torch.version.cuda:
        assert not _C.built_with_cuda()
    elif setting == "1" or toolkit:
        assert _C.built_with_cuda(), f"CLIMBQ_BUILD_CUDA={setting}, torch CUDA {torch.version.cuda}"


# --- the kernels against algorithms.md §1a ------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_float64_spec(shape, dtype, bits, device, gen):
    x, sigma, mu, _ = make_case(shape, dtype, gen, device)
    out = OPS.climbq_act_quant_forward(x, sigma, mu, bits, ACT_RANGE)
    assert_forward_matches_spec(out, x, sigma, mu, bits)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_float64_spec(shape, dtype, bits, device, gen):
    x, sigma, mu, grad = make_case(shape, dtype, gen, device)
    dx = OPS.climbq_act_quant_backward(grad, x, sigma, mu, bits, ACT_RANGE)
    assert_backward_matches_spec(dx, grad, x, sigma, mu)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_is_float32_math_rounded_once(dtype, device, gen):
    """A 16-bit x runs the float32 path on its exact float32 value, then rounds to nearest even."""
    x, sigma, mu, grad = make_case((16, 1031), dtype, gen, device)
    for bits in (4, 16):
        out = OPS.climbq_act_quant_forward(x, sigma, mu, bits, ACT_RANGE)
        out32 = OPS.climbq_act_quant_forward(x.float(), sigma, mu, bits, ACT_RANGE)
        assert torch.equal(out, out32.to(dtype))
    dx = OPS.climbq_act_quant_backward(grad, x, sigma, mu, 4, ACT_RANGE)
    dx32 = OPS.climbq_act_quant_backward(grad.float(), x.float(), sigma, mu, 4, ACT_RANGE)
    assert torch.equal(dx, dx32.to(dtype))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_sixteen_bits_on_a_large_tensor(device, gen):
    """8M elements on the finest grid: codes differ from float64 only at boundaries, and rarely.
    The 32 MiB output also takes the CPU path that advises huge pages for fresh mappings."""
    x, sigma, mu, _ = make_case((128, 65536), torch.float32, gen, device)
    out = OPS.climbq_act_quant_forward(x, sigma, mu, 16, ACT_RANGE)
    assert_forward_matches_spec(out, x, sigma, mu, 16)
    _, q_ref, _ = spec_forward_float64(x.cpu(), sigma.cpu(), mu.cpu(), 16, ACT_RANGE)
    q = torch.round((out.cpu().double() / ACT_RANGE + 1) * 65535 / 2)
    assert (q != q_ref).double().mean() < 1e-2  # about 3e-3 seen with the AVX-512 kernel


@pytest.mark.parametrize("device", DEVICES)
def test_one_bit_gives_both_signs_and_ties_round_to_even(device, gen):
    x, sigma, mu, _ = make_case((8, 257), torch.float32, gen, device)
    out = OPS.climbq_act_quant_forward(x, sigma, mu, 1, ACT_RANGE)
    assert set(out.unique().tolist()) == {-ACT_RANGE, ACT_RANGE}
    # x == mu gives u N = N/2 exactly: odd N makes that a tie, rounded to the even code
    at_mu = mu.view(-1, 1).expand(8, 3).contiguous()
    for bits in (1, 2, 3):
        levels = (1 << bits) - 1
        even_code = 2 * round(levels / 2 / 2)  # the even one of floor(N/2), ceil(N/2)
        expected = ACT_RANGE * (2 * even_code / levels - 1)
        got = OPS.climbq_act_quant_forward(at_mu, sigma, mu, bits, ACT_RANGE)
        assert torch.allclose(got, torch.full_like(got, expected), atol=1e-6), (bits, got[0, 0].item())


@pytest.mark.parametrize("device", DEVICES)
def test_special_values(device):
    x = torch.tensor([[float("inf"), float("-inf"), float("nan"), 0.0]], device=device)
    sigma, mu = torch.ones(1, device=device), torch.zeros(1, device=device)
    out = OPS.climbq_act_quant_forward(x, sigma, mu, 4, ACT_RANGE).cpu()
    assert out[0, 0] == ACT_RANGE and out[0, 1] == -ACT_RANGE and out[0, 2].isnan()
    dx = OPS.climbq_act_quant_backward(torch.ones_like(x), x, sigma, mu, 4, ACT_RANGE).cpu()
    assert dx[0, 0] == 0 and dx[0, 1] == 0 and dx[0, 2].isnan()
    assert math.isclose(dx[0, 3].item(), 2 * ACT_RANGE / math.sqrt(2 * math.pi), rel_tol=1e-6)
    ends_in = torch.tensor([[-1e30, 1e30]], device=device)
    for bits in range(MIN_BITS, MAX_BITS + 1):  # the end codes are exactly -A and A, whatever N
        ends = OPS.climbq_act_quant_forward(ends_in, sigma, mu, bits, 1.7).cpu()
        assert torch.equal(ends, torch.tensor([[-1.7, 1.7]])), (bits, ends)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_and_empty_samples(device):
    for shape in [(0, 5), (3, 0), (0,)]:
        x = torch.randn(shape, device=device)
        sigma, mu = torch.ones(shape[0], device=device), torch.zeros(shape[0], device=device)
        assert OPS.climbq_act_quant_forward(x, sigma, mu, 4, ACT_RANGE).shape == x.shape
        assert OPS.climbq_act_quant_backward(x, x, sigma, mu, 4, ACT_RANGE).shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_misaligned_inputs_give_the_contiguous_answer(device, gen):
    x, sigma, mu, grad = make_case((4, 6, 9, 10), torch.float32, gen, device)
    sigma_strided = torch.stack([sigma, sigma], 1).reshape(-1)[::2]  # stride 2, same values
    views = {
        "channels_last": x.to(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "strided": torch.stack([x, x], -1)[..., 0],
        # contiguous but 4 bytes past a 16-byte boundary: the CUDA kernel's unvectorised path
        "misaligned": torch.cat([x.new_zeros(1), x.reshape(-1)])[1:].view(x.shape),
    }
    grad_view = grad.transpose(1, 2).contiguous().transpose(1, 2)
    expected_out = OPS.climbq_act_quant_forward(x, sigma, mu, 4, ACT_RANGE)
    expected_dx = OPS.climbq_act_quant_backward(grad, x, sigma, mu, 4, ACT_RANGE)
    for name, view in views.items():
        assert torch.equal(view, x), name
        for s in (sigma, sigma_strided):
            out = OPS.climbq_act_quant_forward(view, s, mu, 4, ACT_RANGE)
            assert out.is_contiguous() and torch.equal(out, expected_out), name
            dx = OPS.climbq_act_quant_backward(grad_view, view, s, mu, 4, ACT_RANGE)
            assert torch.equal(dx, expected_dx), name


@pytest.mark.parametrize("device", DEVICES)
def test_inputs_are_not_modified(device, gen):
    x, sigma, mu, grad = make_case((3, 40), torch.float32, gen, device)
    before = [t.clone() for t in (x, sigma, mu, grad)]
    OPS.climbq_act_quant_forward(x, sigma, mu, 8, ACT_RANGE)
    OPS.climbq_act_quant_backward(grad, x, sigma, mu, 8, ACT_RANGE)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, sigma, mu, grad), strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_schema_check(device):
    x = torch.randn(3, 7, device=device)
    sigma, mu = torch.rand(3, device=device) + 0.5, torch.zeros(3, device=device)
    for op, args in [(OPS.climbq_act_quant_forward, (x, sigma, mu, 4, ACT_RANGE)),
                     (OPS.climbq_act_quant_backward, (x, x, sigma, mu, 4, ACT_RANGE))]:
        torch.library.opcheck(op, args, test_utils="test_schema")


@pytest.mark.skipif(not _CUDA_READY, reason="needs a CUDA device and an extension built with CUDA")
def test_cuda_rejects_tensors_on_other_devices():
    x, sigma, mu, _ = make_case((3, 4), torch.float32, torch.Generator().manual_seed(0), "cuda")
    with pytest.raises(RuntimeError, match="sigma must be on x's device"):
        OPS.climbq_act_quant_forward(x, sigma.cpu(), mu, 4, ACT_RANGE)
    with pytest.raises(RuntimeError, match="grad_out must be on x's device"):
        OPS.climbq_act_quant_backward(x.cpu(), x, sigma, mu, 4, ACT_RANGE)


# --- argument checks in C++ surface as RuntimeError ------------------------------------------

def _good_args():
    return torch.randn(3, 4), torch.rand(3) + 0.5, torch.zeros(3)


@pytest.mark.parametrize("bits", [MIN_BITS - 1, MAX_BITS + 1, -3, 32])
def test_bad_bits(bits):
    x, sigma, mu = _good_args()
    with pytest.raises(RuntimeError, match=rf"bits must be in \[{MIN_BITS}, {MAX_BITS}\], got {bits}"):
        OPS.climbq_act_quant_forward(x, sigma, mu, bits, ACT_RANGE)
    with pytest.raises(RuntimeError, match="bits must be in"):
        OPS.climbq_act_quant_backward(x, x, sigma, mu, bits, ACT_RANGE)


@pytest.mark.parametrize("bits", [MIN_BITS, MAX_BITS])
def test_bit_limits_match_python_constants(bits):
    x, sigma, mu = _good_args()
    OPS.climbq_act_quant_forward(x, sigma, mu, bits, ACT_RANGE)


@pytest.mark.parametrize("act_range", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_act_range(act_range):
    x, sigma, mu = _good_args()
    with pytest.raises(RuntimeError, match="act_range must be finite and > 0"):
        OPS.climbq_act_quant_forward(x, sigma, mu, 4, act_range)


@pytest.mark.parametrize("case,match", [
    ("sigma_too_long", r"sigma must have shape \(B,\) = \(3,\)"),
    ("sigma_2d", r"sigma must have shape \(B,\)"),
    ("mu_too_short", r"mu must have shape \(B,\) = \(3,\)"),
    ("sigma_float64", "sigma must be a float32 tensor"),
    ("mu_int", "mu must be a float32 tensor"),
    ("x_float64", "x must be float32, float16 or bfloat16"),
    ("x_0d", "at least one dimension"),
])
def test_bad_shapes_and_dtypes(case, match):
    x, sigma, mu = _good_args()
    x, sigma, mu = {
        "sigma_too_long": (x, torch.ones(4), mu),
        "sigma_2d": (x, torch.ones(3, 1), mu),
        "mu_too_short": (x, sigma, torch.zeros(2)),
        "sigma_float64": (x, sigma.double(), mu),
        "mu_int": (x, sigma, mu.int()),
        "x_float64": (x.double(), sigma, mu),
        "x_0d": (torch.tensor(1.0), sigma[:1].view(()), mu[:1].view(())),
    }[case]
    with pytest.raises(RuntimeError, match=match):
        OPS.climbq_act_quant_forward(x, sigma, mu, 4, ACT_RANGE)


def test_bad_grad_out():
    x, sigma, mu = _good_args()
    with pytest.raises(RuntimeError, match=r"grad_out must have x's shape"):
        OPS.climbq_act_quant_backward(x[:, :3], x, sigma, mu, 4, ACT_RANGE)
    with pytest.raises(RuntimeError, match="grad_out must have x's dtype"):
        OPS.climbq_act_quant_backward(x.half(), x, sigma, mu, 4, ACT_RANGE)


# --- every compiled CPU instruction set -------------------------------------------------------

_ISA_ORDER = ["DEFAULT", "AVX2", "AVX512"]
_ISA_SCRIPT = """
import sys, torch
import climbq_kernels._native as native
module = native.require()
print(module.build_info()["cpu_isa"])
x, sigma, mu, grad, path = torch.load(sys.argv[1])
ops = torch.ops.climbq_native
results = {}
for bits in (1, 4, 16):
    results[bits] = ops.climbq_act_quant_forward(x, sigma, mu, bits, 2.0)
results["dx"] = ops.climbq_act_quant_backward(grad, x, sigma, mu, 4, 2.0)
torch.save(results, path)
"""


def _isas_to_test():
    if _C is None:
        return []
    compiled = _C.build_info()["cpu_isas"].split(",")
    here = torch.backends.cpu.get_cpu_capability()
    usable = _ISA_ORDER[: _ISA_ORDER.index(here) + 1] if here in _ISA_ORDER else ["DEFAULT"]
    return [isa for isa in _ISA_ORDER if isa in compiled and isa in usable]


@pytest.mark.slow
@pytest.mark.parametrize("isa", _isas_to_test())
def test_each_cpu_instruction_set_matches_spec(isa, tmp_path, gen):
    """Run the kernels under ATEN_CPU_CAPABILITY=<isa> in a fresh process (ATen reads it once)."""
    x, sigma, mu, grad = make_case((5, 3, 37), torch.float32, gen)
    x[:, 0, 0] = mu  # u N = N/2: a tie for odd N, which must round to the even code
    inputs, outputs = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save((x, sigma, mu, grad, str(outputs)), inputs)
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa.lower())
    root = os.path.dirname(os.path.dirname(os.path.abspath(_native.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(inputs)], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == isa
    results = torch.load(outputs)
    for bits in (1, 4, 16):
        assert_forward_matches_spec(results[bits], x, sigma, mu, bits)
        levels = (1 << bits) - 1
        even_code = 2 * round(levels / 4)  # the even one of (N - 1)/2 and (N + 1)/2
        tie_out = torch.full((5,), ACT_RANGE * (2 * even_code - levels) / levels)
        torch.testing.assert_close(results[bits][:, 0, 0], tie_out, rtol=0, atol=1e-6)
    assert_backward_matches_spec(results["dx"], grad, x, sigma, mu)

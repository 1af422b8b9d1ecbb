"""Benchmark cases: one per kernel, each with every competitor a user could pick instead.

A case builds fresh random inputs on a device and returns callables, all doing the same work
(forward + backward where the op is trained through), keyed by a label. The first label is the
baseline the others' speed-ups are reported against. `floor_bytes` is the traffic a perfect
kernel must move: time at the measured copy bandwidth is the floor, reported as % of it.
The CPU (pytest-benchmark) and GPU (do_bench) runners both read these cases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.methods import acs
from climbq_kernels.ops._dispatch import KERNELS
from climbq_kernels.ops.rcaq import rcaq_encoder_step
from climbq_kernels.reference import acs as reference_acs
from climbq_kernels.reference import rcaq as reference_rcaq


def cpu_backends() -> tuple[str, ...]:
    """Our CPU backends that can run here (the C++ extension, when built)."""
    return tuple(name for name in ("cpu",) if cq.backends()[name].available)


@dataclass
class Case:
    name: str
    candidates: dict[str, Callable[[], object]]
    floor_bytes: int


def _climbq_act_reference(x, labels, num_classes, bits, act_range, grad):
    """The float64-capable reference, forward then its hand-written backward, in x's dtype."""
    sigma = reference.class_sigma(labels, num_classes)[labels]
    mu = torch.zeros_like(sigma)
    out = reference.climbq_act_quant(x, sigma, mu, bits, act_range)
    return out, reference.climbq_act_quant_backward(grad, x, sigma, mu, bits, act_range)


def climbq_act_case(device: str, dtype: torch.dtype = torch.float32, shape=(128, 65536), num_classes: int = 10,
                    bits: int = 4, act_range: float = 2.0, backends: tuple[str, ...] = ()) -> Case:
    """ClimbQ activation quantizer, forward + backward (algorithms.md §1a)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    labels = torch.randint(0, num_classes, (shape[0],), generator=gen).to(device)
    x_leaf = x.clone().requires_grad_()
    compiled = torch.compile(_climbq_act_reference)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                out = cq.climbq_act_quant(x_leaf, labels, num_classes=num_classes, bits=bits, act_range=act_range)
                return out, torch.autograd.grad(out, x_leaf, grad)[0]
        return run

    args = (x, labels, num_classes, bits, act_range, grad)
    candidates = {"reference (eager)": lambda: _climbq_act_reference(*args),
                  "torch.compile(reference)": lambda: compiled(*args)}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    # forward reads x, writes out; backward reads grad and x, writes dx.
    return Case(f"climbq_act fwd+bwd {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=5 * x.numel() * x.element_size())


def _climbq_act_bn_relu_reference(x, labels, num_classes, bits, act_range, bn_scale, bn_shift, grad):
    """Reference folded BN -> ClimbQ -> ReLU, forward then the gradient to x (tables frozen)."""
    sigma = reference.class_sigma(labels, num_classes)[labels]
    mu = torch.zeros_like(sigma)
    tables = dict(bn_scale=bn_scale, bn_shift=bn_shift, relu=True)
    out = reference.climbq_act_fused(x, sigma, mu, bits, act_range, **tables)
    dy = reference.climbq_act_fused_grad_y(grad, x, sigma, mu, bits, act_range, **tables)
    return out, dy * bn_scale.view(1, -1, *([1] * (x.dim() - 2)))


def climbq_act_bn_relu_case(device: str, dtype: torch.dtype = torch.float32, shape=(32, 64, 64, 64),
                            channels_last: bool = False, num_classes: int = 10, bits: int = 4,
                            act_range: float = 2.0, backends: tuple[str, ...] = ()) -> Case:
    """Folded BN -> ClimbQ activation -> ReLU (algorithms.md §1a placement), forward + gradient to x."""
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    grad = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (shape[0],), generator=gen).to(device)
    bn_scale = (torch.rand(shape[1], generator=gen) + 0.5).to(device)
    bn_shift = (torch.randn(shape[1], generator=gen) * 0.2).to(device)
    x_leaf = x.clone().requires_grad_()
    compiled = torch.compile(_climbq_act_bn_relu_reference)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                out = cq.climbq_act_quant(x_leaf, labels, num_classes=num_classes, bits=bits, act_range=act_range,
                                          bn_scale=bn_scale, bn_shift=bn_shift, relu=True)
                return out, torch.autograd.grad(out, x_leaf, grad)[0]
        return run

    args = (x, labels, num_classes, bits, act_range, bn_scale, bn_shift, grad)
    candidates = {"reference (eager)": lambda: _climbq_act_bn_relu_reference(*args),
                  "torch.compile(reference)": lambda: compiled(*args)}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    layout = " channels_last" if channels_last else ""
    # forward reads x, writes out; backward reads grad and x, writes dx; the (C,) tables are noise.
    return Case(f"climbq_act+bn+relu fwd+bwd {tuple(shape)}{layout} {str(dtype)[6:]}", candidates,
                floor_bytes=5 * x.numel() * x.element_size())


def _climbq_weight_reference(w, bits, grad):
    """The reference weight quantizer, forward then its hand-written backward, in w's dtype."""
    return reference.climbq_weight_quant(w, bits), reference.climbq_weight_quant_backward(grad, w, bits)


def climbq_weight_case(device: str, dtype: torch.dtype = torch.float32, shape=(512, 512, 3, 3), bits: int = 4,
                       backends: tuple[str, ...] = ()) -> Case:
    """ClimbQ weight quantizer, forward + backward (algorithms.md §1b)."""
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(shape, generator=gen) * 0.05).to(device, dtype)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    w_leaf = w.clone().requires_grad_()
    compiled = torch.compile(_climbq_weight_reference)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                out = cq.climbq_weight_quant(w_leaf, bits)
                return out, torch.autograd.grad(out, w_leaf, grad)[0]
        return run

    candidates = {"reference (eager)": lambda: _climbq_weight_reference(w, bits, grad),
                  "torch.compile(reference)": lambda: compiled(w, bits, grad)}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    # Least traffic with the statistics kept for backward: forward reads w for the reduction, then
    # reads w and writes Wq; backward reads g and w for (S1, S2), then reads g, w and writes dw.
    return Case(f"climbq_weight fwd+bwd {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=7 * w.numel() * w.element_size())


def class_stats_case(device: str, dtype: torch.dtype = torch.float32, shape=(1024, 2048), num_classes: int = 100,
                     backends: tuple[str, ...] = ()) -> Case:
    """Per-class count, mean and biased variance by label (algorithms.md §1c steps 1-3, §4a), forward."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) + 0.5).to(device, dtype)
    labels = torch.randint(0, num_classes, (shape[0],), generator=gen).to(device)
    compiled = torch.compile(reference.class_stats)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                return cq.class_stats(x, labels, num_classes)
        return run

    candidates = {"reference (eager)": lambda: reference.class_stats(x, labels, num_classes),
                  "torch.compile(reference)": lambda: compiled(x, labels, num_classes)}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    # One read of x; the (K, F) outputs are negligible.
    return Case(f"class_stats {tuple(shape)} K={num_classes} {str(dtype)[6:]}", candidates,
                floor_bytes=x.numel() * x.element_size())


def _lsq_eager(x, scale, quant_min: int, quant_max: int, grad_factor: float):
    """LSQ as users write it in eager PyTorch (Esser et al.): gradient-scaled step, STE on round."""
    scale = scale.view(1, -1, *([1] * (x.dim() - 2)))
    scaled_step = (scale - scale * grad_factor).detach() + scale * grad_factor
    v = torch.clamp(x / scaled_step, quant_min, quant_max)
    return ((torch.round(v) - v).detach() + v) * scaled_step


def lsq_per_channel_case(device: str, dtype: torch.dtype = torch.float32, shape=(128, 64, 32, 32), bits: int = 4,
                         backends: tuple[str, ...] = ()) -> Case:
    """Per-channel (axis 1) LSQ fake quant, forward + backward to x and the step (algorithms.md §1e)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    quant_min, quant_max = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x_leaf = x.clone().requires_grad_()
    scale_leaf = reference.lsq_init_scale(x, quant_max, axis=1).float().requires_grad_()
    zero_point = torch.zeros(shape[1], dtype=torch.int32, device=device)
    float_zero_point = zero_point.float()
    grad_factor = reference.lsq_grad_scale(x.numel() // shape[1], quant_max)
    compiled = torch.compile(_lsq_eager)

    def torch_learnable():
        out = torch._fake_quantize_learnable_per_channel_affine(x_leaf, scale_leaf, float_zero_point, 1, quant_min,
                                                                 quant_max, grad_factor)
        return torch.autograd.grad(out, (x_leaf, scale_leaf), grad)

    def compiled_lsq():
        out = compiled(x_leaf, scale_leaf, quant_min, quant_max, grad_factor)
        return torch.autograd.grad(out, (x_leaf, scale_leaf), grad)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                out = cq.fake_quant(x_leaf, scale_leaf, zero_point, quant_min, quant_max, axis=1)
                return torch.autograd.grad(out, (x_leaf, scale_leaf), grad)
        return run

    candidates = {"torch learnable fake quant": torch_learnable, "torch.compile(eager LSQ)": compiled_lsq}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    # forward reads x, writes out; backward reads grad and x, writes dx (dscale is per channel).
    return Case(f"LSQ per-channel fwd+bwd {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=5 * x.numel() * x.element_size())


def _per_sample_bits_reference(x, bits, clip, grad):
    out = reference.fake_quant_per_sample_bits(x, bits, clip)
    return out, reference.fake_quant_per_sample_bits_backward(grad, x, bits, clip)


def per_sample_bits_case(device: str, dtype: torch.dtype = torch.float32, shape=(128, 64, 32, 32),
                         backends: tuple[str, ...] = ()) -> Case:
    """Per-sample bit-width fake quant (algorithms.md §3a), forward + backward to x and clip."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    grad = torch.randn(shape, generator=gen).to(device, dtype)
    bits = torch.randint(2, 9, (shape[0],), generator=gen).to(device)
    clip = torch.tensor(2.5, device=device)
    x_leaf, clip_leaf = x.clone().requires_grad_(), clip.clone().requires_grad_()
    compiled = torch.compile(_per_sample_bits_reference)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                out = cq.fake_quant_per_sample_bits(x_leaf, bits, clip_leaf)
                return torch.autograd.grad(out, (x_leaf, clip_leaf), grad)
        return run

    args = (x, bits, clip.to(dtype), grad)
    candidates = {"reference (eager)": lambda: _per_sample_bits_reference(*args),
                  "torch.compile(reference)": lambda: compiled(*args)}
    candidates.update({f"climbq {name}": ours(name) for name in backends})
    return Case(f"per-sample bits fwd+bwd {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=5 * x.numel() * x.element_size())


def _op_backends(op: str, backends: tuple[str, ...]) -> tuple[str, ...]:
    """The backends among `backends` that have a kernel for `op` (RCAQ has no GPU kernel, ACS no CUDA one)."""
    return tuple(name for name in backends if name in KERNELS[op])


def _evs_composition(logits, labels):
    """EVS as a user writes it in PyTorch: the reference's math without its argument checks."""
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return torch.linalg.vector_norm(torch.softmax(logits, 1) - onehot, dim=1)


def _ds_composition(logits_q, logits_fp):
    """DS as a user writes it in PyTorch: the reference's math without its argument checks."""
    return torch.linalg.vector_norm(torch.softmax(logits_q, 1) - torch.softmax(logits_fp, 1), dim=1)


ACS_COMPOSITION = "PyTorch composition (reference's math, unchecked)"
"""No PyTorch op computes the scores: this candidate is softmax, one_hot / softmax, vector_norm."""


def error_vector_score_case(device: str, dtype: torch.dtype = torch.float32, shape=(1024, 1000),
                            backends: tuple[str, ...] = ()) -> Case:
    """ACS error vector score ||softmax(z_i) - onehot(y_i)||_2 per row (algorithms.md §2), no gradient."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(shape, generator=gen) * 3).to(device, dtype)
    labels = torch.randint(0, shape[1], (shape[0],), generator=gen).to(device)
    compiled = torch.compile(reference_acs.error_vector_score)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                return acs.error_vector_score(logits, labels)
        return run

    candidates = {"reference (eager)": lambda: reference_acs.error_vector_score(logits, labels),
                  "torch.compile(reference)": lambda: compiled(logits, labels),
                  ACS_COMPOSITION: lambda: _evs_composition(logits, labels)}
    candidates.update({f"climbq {name}": ours(name) for name in _op_backends("error_vector_score", backends)})
    # One read of the logits and the labels, one write of the (B,) scores.
    return Case(f"error_vector_score {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=logits.numel() * logits.element_size() + labels.numel() * labels.element_size()
                + shape[0] * logits.element_size())


def disagreement_score_case(device: str, dtype: torch.dtype = torch.float32, shape=(1024, 1000),
                            backends: tuple[str, ...] = ()) -> Case:
    """ACS disagreement score ||softmax(z_q,i) - softmax(z_fp,i)||_2 per row (algorithms.md §2), no gradient."""
    gen = torch.Generator().manual_seed(0)
    logits_fp = (torch.randn(shape, generator=gen) * 3).to(device, dtype)
    logits_q = logits_fp + (torch.randn(shape, generator=gen) * 0.3).to(device, dtype)
    compiled = torch.compile(reference_acs.disagreement_score)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                return acs.disagreement_score(logits_q, logits_fp)
        return run

    candidates = {"reference (eager)": lambda: reference_acs.disagreement_score(logits_q, logits_fp),
                  "torch.compile(reference)": lambda: compiled(logits_q, logits_fp),
                  ACS_COMPOSITION: lambda: _ds_composition(logits_q, logits_fp)}
    candidates.update({f"climbq {name}": ours(name) for name in _op_backends("disagreement_score", backends)})
    # One read of each logits tensor, one write of the (B,) scores.
    return Case(f"disagreement_score {tuple(shape)} {str(dtype)[6:]}", candidates,
                floor_bytes=(2 * logits_q.numel() + shape[0]) * logits_q.element_size())


def rcaq_encoder_case(device: str, dtype: torch.dtype = torch.float32, points: int = 100_000, sensors: int = 2,
                      rate: int = 8, prototypes: int = 32, gamma: float = 0.5, backends: tuple[str, ...] = ()) -> Case:
    """One sensor's RCAQ encoder step (algorithms.md §5): costs (P, R) and the new table, sensor 0 of
    `sensors` sensors of `rate` indices each (stride rate^(sensors-1)), `prototypes` prototypes."""
    gen = torch.Generator().manual_seed(0)
    codewords, stride = rate ** sensors, rate ** (sensors - 1)
    x = torch.randn(points, sensors, generator=gen).to(dtype)
    codebook = torch.randn(codewords, sensors, generator=gen).to(dtype)
    w = torch.randn(sensors, generator=gen, dtype=torch.float64)
    w = w / w.norm()
    # Each point's current index on every sensor, and its joint index without sensor 0's term.
    q = torch.randint(0, rate, (points, sensors), generator=gen)
    base_index = (q[:, 1:] * torch.tensor([rate ** (sensors - 2 - i) for i in range(sensors - 1)])).sum(1)
    proto_index = torch.randint(0, prototypes, (points,), generator=gen)
    lookup = torch.randint(0, rate, (prototypes,), generator=gen)
    labels, codeword_labels = reference_rcaq.decision(x, w), reference_rcaq.decision(codebook, w)
    tensors = (x, labels, codebook, codeword_labels, proto_index, base_index, lookup)
    args = (*(t.to(device) for t in tensors), stride, rate, gamma)
    compiled = torch.compile(reference_rcaq.rcaq_encoder_step)

    def ours(backend: str) -> Callable[[], object]:
        def run():
            with cq.use_backend(backend):
                return rcaq_encoder_step(*args)
        return run

    candidates = {"reference (eager)": lambda: reference_rcaq.rcaq_encoder_step(*args),
                  "torch.compile(reference)": lambda: compiled(*args)}
    candidates.update({f"climbq {name}": ours(name) for name in _op_backends("rcaq_encoder_step", backends)})
    # One read of the points and their labels, prototypes and base indices; the (M, d) codebook,
    # the tables and the (P, R) costs are a few KB.
    return Case(f"rcaq_encoder_step N={points} d={sensors} R={rate} P={prototypes} {str(dtype)[6:]}", candidates,
                floor_bytes=points * (sensors * x.element_size() + 3 * 8))


def int4_matmul_case(device: str, dtype: torch.dtype = torch.float32, shape=(4096, 4096), batch: int = 1,
                     group_size: int = 128, backends: tuple[str, ...] = ()) -> Case:
    """INT4 packed-weight matmul y = x @ W^T (algorithms.md §6), x (batch, K) in `dtype`, W (N, K) = `shape`.

    Competitors: the dense F.linear a user would otherwise serve with (float32 on the CPU, x's
    dtype on a GPU), PyTorch's own int4 kernel on the same codes (`_weight_int4pack_mm_for_cpu`;
    on CUDA `_weight_int4pack_mm`, which takes bfloat16 only), and, where they are installed,
    bitsandbytes' 4-bit matmul (NF4 codes of the same weight, one absmax per group), gemlite's
    Triton A16W4 kernels (the same codes, scales and zeros) and torchao's int4 weight-only layer.
    """
    from climbq_kernels.int4_interop import to_torch_int4pack, to_torch_int4pack_cuda

    gen = torch.Generator().manual_seed(0)
    out_features, in_features = shape
    w = torch.randn(shape, generator=gen) * 0.02
    qweight = cq.quantize_int4(w, group_size).to(device)
    x = torch.randn(batch, in_features, generator=gen).to(device, dtype)
    dense_dtype = torch.float32 if device == "cpu" else dtype
    dense_w, dense_x = w.to(device, dense_dtype), x.to(dense_dtype)
    candidates = {f"F.linear {str(dense_dtype)[6:]} (dense)": lambda: torch.nn.functional.linear(dense_x, dense_w)}
    if device == "cpu":
        packed, scales_and_zeros, g = to_torch_int4pack(qweight, dtype)
        candidates["torch _weight_int4pack_mm_for_cpu"] = (
            lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, g, scales_and_zeros))
    elif dtype == torch.bfloat16:
        packed, scales_and_zeros, g = to_torch_int4pack_cuda(qweight)
        candidates["torch _weight_int4pack_mm"] = (
            lambda: torch.ops.aten._weight_int4pack_mm(x, packed, g, scales_and_zeros))

    candidates.update(_bitsandbytes_candidate(w.to(device, dtype), x, group_size))
    candidates.update(_gemlite_candidate(qweight, x))
    candidates.update(_torchao_candidate(w.to(device, dtype), x, group_size))

    def ours(backend: str) -> Callable[[], object]:
        if device == "cpu" and backend == "cpu" and cq.dispatch.explicit_backend() is None:
            # What automatic dispatch runs for CPU tensors, called as a serving loop calls it: a
            # context entered per call would add its own cost to a batch-1 call of a few hundred us.
            return lambda: cq.int4_matmul(x, qweight)

        def run():
            with cq.use_backend(backend):
                return cq.int4_matmul(x, qweight)
        return run

    candidates.update({f"climbq {name}": ours(name) for name in backends})
    return Case(int4_case_name(shape, group_size, batch, dtype), candidates,
                floor_bytes=int4_floor_bytes(shape, group_size, batch, x.element_size()))


def int4_case_name(shape, group_size: int, batch: int, dtype: torch.dtype) -> str:
    out_features, in_features = shape
    return f"int4_matmul {out_features}x{in_features} g={group_size} M={batch} {str(dtype)[6:]}"


def int4_floor_bytes(shape, group_size: int, batch: int, x_element_size: int) -> int:
    """The INT4 matmul's least traffic: the packed codes (two a byte), the float32 scales and
    zeros (one each a group of a row), x and y, each moved once."""
    out_features, in_features = shape
    groups = out_features * -(-in_features // group_size)
    return out_features * in_features // 2 + 8 * groups + batch * (in_features + out_features) * x_element_size


def _bitsandbytes_candidate(w: torch.Tensor, x: torch.Tensor, group_size: int) -> dict[str, Callable[[], object]]:
    """{"bitsandbytes nf4 matmul_4bit": call} where bitsandbytes is installed, else {}.

    Not a dependency: bench/gpu_run.sh installs it from wheels carried to the GPU machine
    (.whl/), and on the CPU it is timed wherever it is importable."""
    try:
        import bitsandbytes
        from bitsandbytes.functional import quantize_4bit
    except ImportError:
        return {}
    packed, state = quantize_4bit(w, blocksize=group_size, quant_type="nf4")
    return {"bitsandbytes nf4 matmul_4bit": lambda: bitsandbytes.matmul_4bit(x, packed.t(), quant_state=state)}


def _gemlite_candidate(qweight, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """{"gemlite A16W4": call} where gemlite is installed and x is a 16-bit CUDA tensor, else {}.

    Not a dependency: a pure-Python wheel carried to the GPU machine like bitsandbytes' (its import
    needs a GPU). gemlite's grouped INT layout is ours, W = (q - zero) * scale, so it gets the
    same codes, scales and zeros (kept in x's dtype there); its output is checked against ours
    once, and a wrapper that disagrees is reported and left out rather than timed."""
    if x.device.type != "cuda" or x.dtype not in (torch.float16, torch.bfloat16):
        return {}
    try:
        from gemlite.helper import A16W4_HQQ_INT
    except ImportError:
        return {}
    layer = A16W4_HQQ_INT(device=x.device, dtype=x.dtype).from_weights(
        reference.unpack_int4(qweight.packed), qweight.scales, qweight.zeros)
    expected = cq.int4_matmul(x, qweight).float()
    error = (layer(x).float() - expected).norm() / expected.norm()
    if not error < 1e-2:
        print(f"gemlite A16W4 left out: relative error {float(error):.3g} against climbq's output")
        return {}
    return {"gemlite A16W4": lambda: layer(x)}


def _torchao_candidate(w: torch.Tensor, x: torch.Tensor, group_size: int) -> dict[str, Callable[[], object]]:
    """{"torchao int4 weight-only": call} where torchao is installed and x is a bfloat16 CUDA
    tensor, else {}.

    Not a dependency: a wheel carried to the GPU machine like bitsandbytes'. torchao (0.18) packs a
    Linear's weight for PyTorch's `_weight_int4pack_mm` ("tile_packed_to_4d", its int4 format that
    needs no fbgemm/mslk kernels; bfloat16 CUDA only, and it has no CPU int4 path), quantizing the
    float weight with its own group-wise parameters: the kernel that torch's candidate times,
    behind torchao's tensor subclass, as a user who quantizes with torchao runs it."""
    if x.device.type != "cuda" or x.dtype != torch.bfloat16:
        return {}
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
    except ImportError:
        return {}
    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
    try:  # a torchao release made for another torch may fail here: reported, not timed
        quantize_(layer, Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d"))
        layer.requires_grad_(False)
        layer(x)
    except Exception as err:
        print(f"torchao int4 weight-only left out: {type(err).__name__}: {err}")
        return {}
    return {"torchao int4 weight-only": lambda: layer(x)}

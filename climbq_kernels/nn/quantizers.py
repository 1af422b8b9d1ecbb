"""Fake-quantizer modules for QAT: what `QuantConv2d`, `QuantLinear` and `QuantBatchNorm*` apply.

Weight quantizers take the float (latent) weight and return the weight the layer computes with:

- `ClimbQWeightQuant`: algorithms.md §1b, values in [-1, 1]. A layer with no BatchNorm after it
  also gets a learned per-output-channel scale, so its outputs keep their magnitude.
- `LSQWeightQuant`: signed LSQ per output channel (algorithms.md §1e), a learned step.
- `AffineWeightQuant`: symmetric per-channel min/max affine fake quant, PyTorch's semantics.

Activation quantizers take an activation (B, ...):

- `ClimbQActQuant`: algorithms.md §1a with the batch labels of `class_labels`; the inference
  form (one constant sigma, threshold bucketing) in eval mode or without labels.
- `LSQActQuant`: per-tensor LSQ with a learned step, initialised from the first training batch.
- `AffineActQuant`: per-tensor affine fake quant whose range comes from a min/max or EMA observer.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .. import functional, ops, reference
from ..batch_labels import current_batch_labels
from ..checkpoint import SelfChecking, value_errors
from ..checks import check_bits, check_number, check_positive_float, check_tensor
from ..constants import DEFAULT_ACT_RANGE, DEFAULT_INFERENCE_SIGMA, IDENTITY_BITS
from ..functional import _table_dtype
from ..ops import train as train_ops
from ..reference._args import check_int
from . import fusable

_MIN_STEP = 1e-8


def _positive_step(step: Tensor) -> Tensor:
    """An LSQ step as used: max(|s|, 1e-8), so a step driven through zero by the optimiser stays valid."""
    return step.abs().clamp_min(_MIN_STEP)


def _channel_view(table: Tensor, like: Tensor) -> Tensor:
    """A (C,) per-output-channel table viewed to broadcast over a weight (C, ...)."""
    return table.reshape(-1, *([1] * (like.dim() - 1)))


def _signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
                ) -> Tensor:
    """The affine fake-quant op (algorithms.md §1e) on parameters valid by construction (scale > 0,
    zero point in range): the public function's value checks would read them on the host every
    training step."""
    return ops.fake_quant_affine_eager(x, scale, zero_point, qmin, qmax, axis)


def _check_uniform_bits(bits, signed: bool, name: str = "bits") -> int:
    check_bits(bits, name)
    if bits == IDENTITY_BITS:
        return bits
    low = 2 if signed else 1
    if bits < low:
        raise ValueError(f"{name} must be at least {low} for a {'signed' if signed else 'unsigned'} grid, got {bits}")
    return bits


class _Quantizer(SelfChecking, nn.Module):
    """A quantizer whose grid settings (`SETTINGS`) travel in its state dict as extra state, so a
    checkpoint made with another method, bit-width or scale rule is refused on load instead of
    loading its tensors into a different grid; so is one whose `CHECKPOINT_VALUES` tensors are
    not finite (or, for a sigma, not > 0)."""

    SETTINGS: tuple[str, ...] = ("bits",)
    CHECKPOINT_VALUES: dict[str, str] = {}
    """Learned or observed tensors and the values a checkpoint may hold in them: "finite", or
    "positive" (finite and > 0). LSQ steps may hold any finite value: the forward uses
    max(|s|, 1e-8), so a step an optimiser drove through zero is a valid trained state."""

    def _settings(self) -> dict:
        return {"quantizer": type(self).__name__, **{name: getattr(self, name) for name in self.SETTINGS}}

    def get_extra_state(self) -> dict:
        return self._settings()

    def set_extra_state(self, state) -> None:
        if not _same_settings(state, self._settings()):
            raise ValueError(f"the checkpoint's quantizer {state} does not match this model's {self._settings()}: "
                             "quantize_ the model with the config the checkpoint was trained with")

    def _check_checkpoint(self, state_dict, prefix: str) -> list[str]:
        """Messages for every entry of `state_dict` under `prefix` this quantizer cannot hold; changes nothing."""
        errors = []
        key, settings = prefix + "_extra_state", self._settings()
        if key in state_dict and not _same_settings(state_dict[key], settings):
            found = state_dict[key]
            differ = ""
            if isinstance(found, dict):
                differ = "; ".join(f"{name} {found.get(name, '(none)')!r} in the checkpoint, {value!r} here"
                                   for name, value in settings.items() if not _same_value(found.get(name), value))
                differ = f" ({differ})" if differ else ""
            errors.append(f"{key}: the checkpoint's quantizer {found} does not match this model's {settings}"
                          f"{differ}: quantize_ the model with the config the checkpoint was trained with")
        return errors + value_errors(state_dict, prefix, self.CHECKPOINT_VALUES, type(self).__name__)



def _same_value(a, b) -> bool:
    return type(a) is type(b) and a == b


def _same_settings(state, settings: dict) -> bool:
    """Whether extra state `state` holds exactly `settings` (types too: bits 4.0 is not bits 4)."""
    return (isinstance(state, dict) and state.keys() == settings.keys()
            and all(_same_value(state[name], value) for name, value in settings.items()))


# --- weights ----------------------------------------------------------------------------------

class ClimbQWeightQuant(_Quantizer):
    """W -> climbq_weight_quant(W, bits) (algorithms.md §1b), times a learned per-channel scale.

    With `channel_scale`, out = s_c * Wq for output channel c. A layer followed by a
    BatchNorm does not need it (the BatchNorm absorbs any scale); any other layer would
    otherwise see weights in [-1, 1] whatever their trained magnitude. `init_scale(W)` sets
    s_c by least squares, s_c = <W_c, Wq_c> / <Wq_c, Wq_c>, so the quantized layer starts with
    its float layer's output scale; the optimiser then learns s like any other parameter.
    """

    SETTINGS = ("bits", "channel_scale")
    CHECKPOINT_VALUES = {"scale": "finite"}  # learned: any sign is a trained state

    def __init__(self, bits: int = 4, out_channels: int | None = None, channel_scale: bool = False):
        super().__init__()
        check_bits(bits, "bits")
        if channel_scale:
            check_int("out_channels", out_channels, minimum=1)
        self.bits = bits
        self.scale = nn.Parameter(torch.ones(out_channels)) if channel_scale else None

    @property
    def channel_scale(self) -> bool:
        return self.scale is not None

    @torch.no_grad()
    def init_scale(self, weight: Tensor) -> None:
        if self.scale is None or self.bits == IDENTITY_BITS:
            return
        wq = functional.climbq_weight_quant(weight.detach(), self.bits).flatten(1)
        w = weight.detach().flatten(1)
        fit = (w * wq).sum(dim=1) / (wq * wq).sum(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
        self.scale.copy_(torch.where(fit > 0, fit, torch.ones_like(fit)))

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits == IDENTITY_BITS:
            return weight
        if train_ops.native_training(weight):  # one op, channel scale included
            return train_ops.native().climbq_weight_train(weight, self.bits, self.scale)
        if torch.compiler.is_compiling():
            wq = fusable.climbq_weight(weight, self.bits)
        else:
            wq = functional.climbq_weight_quant(weight, self.bits)
        return wq if self.scale is None else wq * _channel_view(self.scale.to(wq.dtype), wq)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channel_scale={self.scale is not None}"


class LSQWeightQuant(_Quantizer):
    """Signed LSQ per output channel (algorithms.md §1e): codes in [-2^(b-1), 2^(b-1) - 1].

    The step s (C,) starts at 2 mean|W_c| / sqrt(Qp) (`init_step`) and is learned with LSQ's
    gradient scale; the forward uses max(|s|, 1e-8), so an optimiser step through zero leaves
    a valid (positive) step instead of an error.
    """

    CHECKPOINT_VALUES = {"step": "finite"}

    def __init__(self, bits: int = 4, out_channels: int = 1):
        check_int("out_channels", out_channels, minimum=1)
        super().__init__()
        self.bits = _check_uniform_bits(bits, signed=True)
        self.step = nn.Parameter(torch.ones(out_channels))
        self.register_buffer("zero_point", torch.zeros(out_channels, dtype=torch.int32), persistent=False)

    @torch.no_grad()
    def init_step(self, weight: Tensor) -> None:
        if self.bits != IDENTITY_BITS:
            self.step.copy_(reference.lsq_init_scale(weight.detach().float(), _signed_range(self.bits)[1], axis=0))

    def effective_step(self) -> Tensor:
        """The step the forward uses, max(|s|, 1e-8), (C,)."""
        return _positive_step(self.step)

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits == IDENTITY_BITS:
            return weight
        qmin, qmax = _signed_range(self.bits)
        if torch.compiler.is_compiling():
            return fusable.lsq(weight, self.step, qmin, qmax, axis=0)
        if train_ops.native_training(weight):
            return train_ops.lsq_train(weight, self.step, self.zero_point, qmin, qmax, 0)
        return _fake_quant(weight, self.effective_step(), self.zero_point, qmin, qmax, axis=0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel=True"


class AffineWeightQuant(_Quantizer):
    """Symmetric per-channel affine fake quant with the range of the current weight (min/max).

    scale_c = max|W_c| / (2^(b-1) - 1), zero point 0, codes in [-2^(b-1), 2^(b-1) - 1];
    PyTorch's fake-quant semantics and straight-through gradient to W (none to the scale).
    """

    def __init__(self, bits: int = 8, out_channels: int = 1):
        check_int("out_channels", out_channels, minimum=1)
        super().__init__()
        self.bits = _check_uniform_bits(bits, signed=True)
        self.register_buffer("zero_point", torch.zeros(out_channels, dtype=torch.int32), persistent=False)

    @torch.no_grad()
    def scale_of(self, weight: Tensor) -> Tensor:
        """scale_c = max|W_c| / (2^(b-1) - 1), float32 (C,), at least float32's epsilon."""
        amax = weight.detach().abs().flatten(1).amax(dim=1).float()
        return (amax / _signed_range(self.bits)[1]).clamp_min(torch.finfo(torch.float32).eps)

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits == IDENTITY_BITS:
            return weight
        qmin, qmax = _signed_range(self.bits)
        if torch.compiler.is_compiling():
            return fusable.affine(weight, self.scale_of(weight), self.zero_point, qmin, qmax, axis=0)
        if train_ops.native_training(weight):
            return train_ops.native().affine_weight_train(weight, qmin, qmax)
        return _fake_quant(weight, self.scale_of(weight), self.zero_point, qmin, qmax, axis=0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel=True, observer=minmax"


# --- activations ------------------------------------------------------------------------------

SIGMA_RULES = ("batch_frequency", "class_std")
ACT_FORMS = ("published", "relu")
CLASS_STD_SCALE = 2.0
"""`sigma="class_std"` uses sigma_c = 2 * std_c: at unit spread this matches the published rule's
sigma ~ 2, which maps +-4 standard deviations onto the code range (algorithms.md §1f)."""
RUNNING_MOMENTUM = 0.1
"""Weight of each training batch in the running sigma of `sigma="class_std"` (BatchNorm's default)."""


def _check_batch_size(labels: int, x: Tensor) -> None:
    """The labels of `class_labels` must be one per sample of the quantizer's input."""
    if labels != x.shape[0]:
        raise ValueError(f"labels of class_labels have {labels} entries, but the quantizer's input has batch size "
                         f"{x.shape[0]}")


class ClimbQActQuant(_Quantizer):
    """ClimbQ activation quantizer (algorithms.md §1a, §1f) reading the labels of `class_labels`.

    sigma: "batch_frequency", the published rule sigma_c = 2 - n_c / sum_k n_k^2, its per-sample
    table built once per batch for all quantizers; or "class_std", sigma_c = 2 * (standard
    deviation of this quantizer's input over the batch samples of class c), from the
    class-statistics op, with a running value (EMA of 2 * the batch's standard deviation) for
    inference and for classes absent from the batch. Statistics carry no gradient.

    form: "published", out = A (2q/N - 1) on the CDF Phi(z), placed before the ReLU; or "relu",
    the ReLU folded in: out = A q / N on the one-sided CDF max(2 Phi(z) - 1, 0), so all 2^b
    codes survive the ReLU (use it only where a ReLU follows).

    Eval mode, or no labels: one sigma for every sample (`inference_sigma`, or the running sigma
    for "class_std"); the published form then buckets against thresholds (no erf). Training
    without labels warns once per process.
    """

    _warned_without_labels = False
    SETTINGS = ("bits", "num_classes", "act_range", "sigma", "form")
    CHECKPOINT_VALUES = {"running_sigma": "positive"}  # divides the input in eval mode

    def __init__(self, bits: int = 4, num_classes: int = 10, act_range: float = DEFAULT_ACT_RANGE,
                 inference_sigma: float = DEFAULT_INFERENCE_SIGMA, sigma: str = "batch_frequency",
                 form: str = "published"):
        super().__init__()
        check_bits(bits, "bits")
        check_int("num_classes", num_classes, minimum=1)
        act_range = check_positive_float("act_range", act_range)
        inference_sigma = check_positive_float("inference_sigma", inference_sigma)
        if sigma not in SIGMA_RULES:
            raise ValueError(f"sigma must be one of {SIGMA_RULES}, got {sigma!r}")
        if form not in ACT_FORMS:
            raise ValueError(f"form must be one of {ACT_FORMS}, got {form!r}")
        self.bits, self.num_classes, self.sigma, self.form = bits, num_classes, sigma, form
        self.act_range, self.inference_sigma = float(act_range), float(inference_sigma)
        if sigma == "class_std":
            self.register_buffer("running_sigma", torch.tensor(float(inference_sigma)))
        self._native_rule = bits != IDENTITY_BITS and sigma == "batch_frequency" and form == "published"
        """Whether a training call may take the short path of `forward` (the published form with the
        batch-frequency table), where the input allows it."""

    def _class_std_tables(self, x: Tensor, batch) -> tuple[Tensor, Tensor]:
        """Per-sample (sigma, mu) of `sigma="class_std"`; updates the running sigma.

        Class counts, means and variances come from the class-statistics op, merged across
        processes (when the batch is split over several) from their counts, sums and squared
        deviations about the merged class means: two all-reduces of K-vectors.
        """
        labels = batch.checked(self.num_classes)
        with torch.no_grad():
            flat = x.detach().reshape(x.shape[0], 1, -1)
            counts, mean, var = functional.class_stats(flat, labels, self.num_classes)
            n, m, v = counts.double(), mean[:, 0].double(), var[:, 0].double()
            merged = batch.all_reduce(torch.stack([n, n * m]))
            n_all = merged[0]
            mean_all = merged[1] / n_all.clamp_min(1)
            m2 = batch.all_reduce(n * v + n * (m - mean_all) ** 2)
            total = n_all.sum().clamp_min(1)
            overall = (n_all * mean_all).sum() / total
            batch_var = (m2 + n_all * (mean_all - overall) ** 2).sum() / total
            running = self.running_sigma.double()
            per_class = torch.where(n_all > 0, CLASS_STD_SCALE * (m2 / n_all.clamp_min(1)).sqrt(), running)
            per_class = per_class.clamp_min(torch.finfo(torch.float32).tiny).to(_table_dtype(x))
            self.running_sigma.lerp_((CLASS_STD_SCALE * batch_var.sqrt()).to(self.running_sigma.dtype),
                                     RUNNING_MOMENTUM)
            sigma = per_class[labels]
        return sigma, torch.zeros_like(sigma)

    def _tables(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Per-sample (sigma, mu) for a training batch with labels; None for the inference form."""
        batch = current_batch_labels()
        if not self.training or batch is None:
            if self.training and not ClimbQActQuant._warned_without_labels:
                ClimbQActQuant._warned_without_labels = True
                warnings.warn("climbq: a ClimbQ model is training without labels, so its activation quantizers "
                              "use one constant sigma (no class-wise scaling); run the forward inside "
                              "climbq_kernels.class_labels(labels)", stacklevel=3)
            return None
        _check_batch_size(batch.labels.shape[0], x)
        if self.sigma == "class_std":
            return self._class_std_tables(x, batch)
        return batch.per_sample_tables(self.num_classes, _table_dtype(x))

    def forward(self, x: Tensor) -> Tensor:
        batch = current_batch_labels()
        if self._native_rule and batch is not None and self.training and train_ops.native_training(x):
            # The common training call, kept short: its host time is paid per layer per step.
            sigma, mu = batch.per_sample_tables(self.num_classes, torch.float32)
            _check_batch_size(sigma.shape[0], x)
            return train_ops.native().climbq_act_train(x, sigma, mu, self.bits, self.act_range)
        if self.bits == IDENTITY_BITS:
            return torch.relu(x) if self.form == "relu" else x
        tables = self._tables(x)
        if tables is None:
            if self.sigma == "class_std":
                sigma = self.running_sigma.to(_table_dtype(x)).expand(x.shape[0])
                tables = (sigma, torch.zeros_like(sigma))
            elif self.form == "published":
                return functional.climbq_act_quant(x, bits=self.bits, act_range=self.act_range,
                                                   sigma=self.inference_sigma)
            else:
                sigma = torch.full((x.shape[0],), self.inference_sigma, dtype=_table_dtype(x), device=x.device)
                tables = (sigma, torch.zeros_like(sigma))
        if self.form == "relu":
            return fusable.climbq_act_relu(x, *tables, self.bits, self.act_range)
        if torch.compiler.is_compiling():
            return fusable.climbq_act(x, *tables, self.bits, self.act_range)
        if train_ops.native_training(x):
            return train_ops.climbq_act_train(x, *tables, self.bits, self.act_range)
        return ops.climbq_act_fused_eager(x, *tables, None, None, None, self.bits, self.act_range, False)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, num_classes={self.num_classes}, act_range={self.act_range}, "
                f"sigma={self.sigma}, form={self.form}, inference_sigma={self.inference_sigma}")


class _LazyInit(_Quantizer):
    """A quantizer whose parameters are set from the first training batch; a loaded state dict
    counts as initialised (checked on the host through a Python flag, not a tensor read)."""

    def __init__(self):
        super().__init__()
        self._needs_init = True

    def _require_init(self) -> None:
        if self._needs_init:
            raise RuntimeError(f"{type(self).__name__} has not seen a training batch yet, so it has no range: run "
                               "the model in training mode on a batch first, or load a trained state dict")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        refused = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if len(error_msgs) == refused:
            self._needs_init = False


class LSQActQuant(_LazyInit):
    """Per-tensor LSQ (algorithms.md §1e) with a learned step; signed or unsigned codes.

    signed: [-2^(b-1), 2^(b-1) - 1] (where negatives reach the quantizer, e.g. after a
    BatchNorm); unsigned: [0, 2^b - 1] (after a ReLU). The step starts at 2 mean|x| / sqrt(Qp)
    from the first training batch and is used as max(|s|, 1e-8).
    """

    SETTINGS = ("bits", "signed")
    CHECKPOINT_VALUES = {"step": "finite"}

    def __init__(self, bits: int = 4, signed: bool = True):
        super().__init__()
        self.bits = _check_uniform_bits(bits, signed=signed)
        self.signed = bool(signed)
        self._codes = _signed_range(bits) if signed else (0, (1 << bits) - 1)
        """(qmin, qmax) of the code grid."""
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            check_tensor("x", x)  # raises, naming x
        if self.bits == IDENTITY_BITS:
            return x
        if self._needs_init:
            self._init_step(x)
        # The step and zero point read from the module's dicts: nn.Module.__getattr__ costs a
        # microsecond each, a share of the host time a training call pays per layer.
        step, zero_point = self._parameters["step"], self._buffers["zero_point"]
        qmin, qmax = self._codes
        if train_ops.native_training(x):
            return train_ops.native().lsq_train(x, step, zero_point, qmin, qmax, None)
        if torch.compiler.is_compiling():
            return fusable.lsq(x, step, qmin, qmax)
        return _fake_quant(x, _positive_step(step), zero_point, qmin, qmax)

    def _init_step(self, x: Tensor) -> None:
        """Set the step from the first training batch (refused in eval mode: there is no range yet)."""
        if not self.training:
            self._require_init()
        with torch.no_grad():
            self.step.copy_(reference.lsq_init_scale(x.detach().float(), self._codes[1]))
        self._needs_init = False

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class AffineActQuant(_LazyInit):
    """Per-tensor affine fake quant (PyTorch's semantics) with an observed range.

    Codes in [0, 2^b - 1] with a zero point, so one grid covers signed and unsigned inputs.
    observer="minmax" keeps the running min and max of every training batch; "ema" moves them
    by `averaging_constant` per batch (PyTorch's MovingAverageMinMaxObserver). The range always
    includes 0; scale = (max - min) / (2^b - 1), zero point = clamp(-rint(min / scale)).
    """

    SETTINGS = ("bits", "observer")
    CHECKPOINT_VALUES = {"min_val": "finite", "max_val": "finite"}

    def __init__(self, bits: int = 8, observer: str = "ema", averaging_constant: float = 0.01):
        super().__init__()
        self.bits = _check_uniform_bits(bits, signed=False)
        if observer not in ("minmax", "ema"):
            raise ValueError(f"observer must be 'minmax' or 'ema', got {observer!r}")
        check_number("averaging_constant", averaging_constant)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant!r}")
        self.observer, self.averaging_constant = observer, float(averaging_constant)
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        lo, hi = x.detach().amin().float(), x.detach().amax().float()
        if self._needs_init:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self._needs_init = False
        elif self.observer == "minmax":
            torch.minimum(self.min_val, lo, out=self.min_val)
            torch.maximum(self.max_val, hi, out=self.max_val)
        else:
            self.min_val.lerp_(lo, self.averaging_constant)
            self.max_val.lerp_(hi, self.averaging_constant)

    def forward(self, x: Tensor) -> Tensor:
        min_val, max_val = self._buffers["min_val"], self._buffers["max_val"]
        if (self.bits != IDENTITY_BITS and (self.training or not self._needs_init) and min_val.dtype == torch.float32
                and train_ops.native_training(x)):
            # One op: observe (in training), derive the scale and zero point, fake quantize.
            out = train_ops.native().affine_act_train(x, min_val, max_val, (1 << self.bits) - 1,
                                                      self.observer == "ema", self.averaging_constant,
                                                      self._needs_init, self.training)
            self._needs_init = self._needs_init and not self.training
            return out
        if self.bits == IDENTITY_BITS:
            return x
        if self.training:
            self._observe(x)
        self._require_init()
        qmax = (1 << self.bits) - 1
        with torch.no_grad():
            lo, hi = self.min_val.clamp(max=0), self.max_val.clamp(min=0)
            scale = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float32).eps)
            zero_point = torch.round(-lo / scale).clamp(0, qmax).to(torch.int32)
        if torch.compiler.is_compiling():
            return fusable.affine(x, scale, zero_point, 0, qmax)
        return _fake_quant(x, scale, zero_point, 0, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, observer={self.observer}"

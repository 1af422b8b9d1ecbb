"""Int4Linear, Int4Conv2d and convert_int4 (algorithms.md §6): outputs against the float64 dequantized layer,
ClimbQ weights stored without loss, exact state dicts, clear errors."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

import climbq_kernels as cq
from climbq_kernels import reference
from climbq_kernels.nn import Int4Conv2d, Int4Linear, Int4Module, convert_int4
from climbq_kernels.testing import assert_error_rule

from .conftest import assert_same_state

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _randomize(layer: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return layer


def _linear(gen, in_features, out_features, bias=True):
    return _randomize(nn.Linear(in_features, out_features, bias=bias), gen)


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def _dequantized_float_model(converted: nn.Module, float_model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`float_model` in `dtype`, each converted layer's weight replaced by its dequantized value."""
    model = copy.deepcopy(float_model).to(dtype)
    for name, module in converted.named_modules():
        if isinstance(module, Int4Module):
            model.get_submodule(name).weight.data = module.dequantize(dtype)
    return model


# --- Int4Linear ---------------------------------------------------------------------------------

@pytest.mark.parametrize("group_size", [32, 128, None])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead", [(5,), (2, 3)], ids=str)
def test_linear_matches_float64_dequantized_linear(group_size, dtype, lead, gen):
    layer = Int4Linear.from_linear(_linear(gen, 256, 48), group_size)
    x = torch.randn(*lead, 256, generator=gen).to(dtype)
    got = layer(x)
    assert got.dtype == dtype and got.shape == (*lead, 48)
    ref64 = F.linear(x.double(), layer.dequantize(torch.float64), layer.bias.double())
    ref_lowp = F.linear(x, layer.dequantize(dtype), layer.bias.to(dtype))
    assert_error_rule(got, ref64, ref_lowp)


@pytest.mark.parametrize("in_features,group_size", [(129, None), (127, 32), (1, None)])
def test_odd_in_features_are_padded_without_changing_the_output(in_features, group_size, gen):
    float_layer = _linear(gen, in_features, 16, bias=False)
    layer = Int4Linear.from_linear(float_layer, group_size)
    assert layer.packed.shape == (16, (in_features + 1) // 2) and layer.dequantize().shape == (16, in_features)
    x = torch.randn(3, in_features, generator=gen)
    assert_error_rule(layer(x), F.linear(x.double(), layer.dequantize(torch.float64)),
                      F.linear(x, layer.dequantize()))
    # the pad column repeats the last one: no group gets a wider range than the real weights give it
    err = (layer.dequantize() - float_layer.weight).abs().max()
    assert err <= layer.scales.max() / 2 + 1e-6


def test_from_linear_keeps_device_bias_dtype_and_mode(gen):
    float_layer = _linear(gen, 64, 8).to(torch.bfloat16).eval()
    layer = Int4Linear.from_linear(float_layer, 32)
    assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer.bias, float_layer.bias)
    assert not layer.training and layer.packed.device == float_layer.weight.device
    assert layer.scales.dtype == torch.float32
    assert Int4Linear.from_linear(_linear(gen, 64, 8, bias=False), 32).bias is None
    assert "group_size=32" in repr(layer) and "in_features=64" in repr(layer)


def test_dtype_casts_keep_float32_scales(gen):
    layer = Int4Linear.from_linear(_linear(gen, 64, 8), 32)
    scales = layer.scales.clone()
    layer.half()
    assert layer.scales.dtype == torch.float32 and torch.equal(layer.scales, scales)
    assert layer.bias.dtype == torch.float16 and layer.packed.dtype == torch.uint8
    assert layer(torch.randn(2, 64, generator=gen).half()).dtype == torch.float16


def test_gradient_reaches_x(gen):
    layer = Int4Linear.from_linear(_linear(gen, 64, 8), 32)
    x = torch.randn(3, 64, generator=gen, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.dequantize().sum(0).expand(3, 64))


def test_linear_forward_compiles_fullgraph(gen):
    layer = Int4Linear.from_linear(_linear(gen, 128, 32), 64)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 128, generator=gen)
    torch.testing.assert_close(compiled(x), layer(x))


# --- Int4Conv2d ---------------------------------------------------------------------------------

CONVS = [
    {"kernel_size": 3, "padding": 1},
    {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
    {"kernel_size": (3, 5), "dilation": (2, 1), "padding": (2, 1)},
    {"kernel_size": 3, "dilation": 2, "padding": "same"},
    {"kernel_size": 4, "padding": "same"},  # asymmetric: one more row and column at the end
    {"kernel_size": 1},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": "valid", "stride": (1, 2)},
]


def _conv_reference(conv, layer, x, dtype):
    ref = copy.deepcopy(conv).to(dtype)
    ref.weight.data = layer.dequantize(dtype)
    return ref(x.to(dtype))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("options", CONVS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_conv_matches_float64_dequantized_conv(options, dtype, gen):
    conv = _randomize(nn.Conv2d(32, 16, **options), gen)  # K = 32*kh*kw: a multiple of 32
    layer = Int4Conv2d.from_conv2d(conv, 32)
    assert layer.group_size == 32
    x = torch.randn(2, 32, 9, 11, generator=gen).to(dtype)
    got = layer(x)
    ref64 = _conv_reference(conv, layer, x, torch.float64)
    assert got.dtype == dtype
    assert_error_rule(got, ref64, _conv_reference(conv, layer, x, dtype))


def test_conv_with_odd_k_and_unbatched_input(gen):
    conv = _randomize(nn.Conv2d(3, 8, 7, stride=2, padding=3), gen)  # K = 147: stored padded to 148
    layer = Int4Conv2d.from_conv2d(conv, None)
    assert layer.in_features == 147 and layer.packed_in_features == 148 and layer.group_size == 148
    x = torch.randn(3, 20, 17, generator=gen)
    got = layer(x)
    assert got.shape == conv(x).shape
    ref64, ref32 = (_conv_reference(conv, layer, x, dtype) for dtype in (torch.float64, torch.float32))
    assert_error_rule(got, ref64, ref32)


# --- ClimbQ-trained weights: stored without loss -----------------------------------------------

@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("rows,in_features", [(24, 64), (24, 129), (512, 4608)], ids=str)  # at 512x4608 the
# reference's codes (int4_from_climbq_weight) differ from the CPU kernel's in an element or two: codes must
# come from the kernel's output
def test_climbq_linear_is_stored_losslessly(bits, rows, in_features, gen):
    float_layer = _linear(gen, in_features, rows)
    layer = Int4Linear.from_linear(float_layer, climbq_bits=bits)
    wq = cq.climbq_weight_quant(float_layer.weight.detach(), bits)
    assert torch.equal(layer.dequantize(), wq), "bit for bit"
    assert layer.group_size == layer.packed_in_features
    x = torch.randn(3, in_features, generator=gen)
    bias = float_layer.bias.detach()
    assert_error_rule(layer(x), F.linear(x.double(), wq.double(), bias.double()), F.linear(x, wq, bias))


def test_climbq_codes_agree_with_the_reference_conversion(gen):
    float_layer = _linear(gen, 64, 12)
    layer = Int4Linear.from_linear(float_layer, climbq_bits=4)
    packed, scales, zeros = reference.int4_from_climbq_weight(float_layer.weight.detach(), bits=4)
    assert torch.equal(layer.packed, packed) and torch.equal(layer.scales, scales) and torch.equal(layer.zeros, zeros)


class _ClimbQWeight(nn.Module):
    """A QAT parametrization: the layer computes with climbq_weight_quant(latent weight)."""

    def __init__(self, bits):
        super().__init__()
        self.bits = bits

    def forward(self, w):
        return cq.climbq_weight_quant(w, self.bits)


def test_climbq_conv_and_parametrized_layers_convert_losslessly(gen):
    model = nn.Sequential(_randomize(nn.Conv2d(4, 8, 3, padding=1), gen), nn.Flatten(), _linear(gen, 8 * 5 * 5, 6))
    for layer in (model[0], model[2]):
        parametrize.register_parametrization(layer, "weight", _ClimbQWeight(3))
    quantized = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    x = torch.randn(2, 4, 5, 5, generator=gen)
    expected = model(x).detach()
    convert_int4(model, climbq_bits=3)
    assert isinstance(model[0], Int4Conv2d) and isinstance(model[2], Int4Linear)
    assert torch.equal(model[0].dequantize(), quantized[0]) and torch.equal(model[2].dequantize(), quantized[1])
    torch.testing.assert_close(model(x), expected)


# --- state dicts ----------------------------------------------------------------------------------

def test_linear_state_dict_round_trips_exactly_and_carries_the_group_size(gen):
    layer = Int4Linear.from_linear(_linear(gen, 256, 32), 64)
    fresh = Int4Linear(256, 32, group_size=128)  # built for another group size: the checkpoint's wins
    fresh.load_state_dict(_round_trip(layer.state_dict()))
    assert fresh.group_size == 64
    assert_same_state(fresh.state_dict(), layer.state_dict())
    x = torch.randn(3, 256, generator=gen)
    assert torch.equal(fresh(x), layer(x))


def _small_convnet(gen):
    return _randomize(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                                    nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, 10)), gen)


def test_converted_model_state_dict_round_trips_into_a_fresh_conversion(gen):
    with pytest.warns(UserWarning, match="one group per row: 0, 2"):
        model = convert_int4(_small_convnet(gen), 32)  # K = 27 (odd, stored as 28), 144, 288
    assert [m.group_size for m in (model[0], model[2], model[5])] == [28, 144, 32]
    fresh = convert_int4(_small_convnet(torch.Generator().manual_seed(1)), None)
    fresh.load_state_dict(_round_trip(model.state_dict()))
    assert_same_state(fresh.state_dict(), model.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=gen)
    assert torch.equal(fresh(x), model(x))


def test_loading_a_truncated_or_wrong_packed_weight_names_the_tensor_and_shape(gen):
    model = nn.Sequential(Int4Linear.from_linear(_linear(gen, 128, 16), 64))
    state = model.state_dict()
    cases = [
        ({**state, "0.packed": state["0.packed"][:, :32]},
         r"0\.packed must be a torch\.uint8 tensor of shape \(16, 64\) .*got torch\.uint8 \(16, 32\) \(a truncated"),
        ({**state, "0.packed": state["0.packed"].int()}, r"0\.packed must be a torch\.uint8 tensor .*got torch\.int32"),
        ({**state, "0.scales": state["0.scales"][:, :1]},
         r"0\.scales must be a torch\.float32 tensor of shape \(16, 2\) .*group_size 64, got torch\.float32 \(16, 1\)"),
        ({**state, "0._extra_state": {"group_size": 48}}, r"0\._extra_state must hold a valid group_size"),
        ({"0.weight": torch.zeros(16, 128), "0.bias": torch.zeros(16)}, r"0\.weight is a float weight"),
    ]
    for bad, match in cases:
        with pytest.raises(RuntimeError, match=match):
            model.load_state_dict(bad)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*0\.zeros"):
        model.load_state_dict({k: v for k, v in state.items() if k != "0.zeros"})
    fresh = nn.Sequential(Int4Linear(128, 16, group_size=64))
    fresh.load_state_dict(state)  # the failed loads above left nothing half-loaded that matters
    assert_same_state(fresh.state_dict(), state)


# --- convert_int4 -------------------------------------------------------------------------------

@pytest.mark.slow
def test_convert_int4_resnet18_matches_its_dequantized_float_model(gen):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    float_model = torchvision.models.resnet18(weights=None).eval()
    model = copy.deepcopy(float_model)
    with pytest.warns(UserWarning, match=r"group_size 64 does not divide .* 1 layer\(s\).*: conv1$"):
        assert convert_int4(model, 64) is model
    convs = [m for m in model.modules() if isinstance(m, Int4Conv2d)]
    assert len(convs) == 20 and isinstance(model.fc, Int4Linear) and not model.training
    assert model.conv1.group_size == 148 and model.layer1[0].conv1.group_size == 64
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        got = model(x)
        ref64 = _dequantized_float_model(model, float_model, torch.float64)(x.double())
        ref32 = _dequantized_float_model(model, float_model, torch.float32)(x)
    assert_error_rule(got, ref64, ref32)


class _Block(nn.Module):
    """A pre-norm transformer block: attention, then an MLP."""

    def __init__(self, dim=64, heads=4, hidden=128):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_convert_int4_transformer_mlp(dtype, gen):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(32, 64), _Block(), _Block(), nn.Linear(64, 10)).eval()
    model = copy.deepcopy(float_model)
    with pytest.warns(UserWarning, match=r"kept in float: 1\.attn\.out_proj \(read by its nn\.MultiheadAttention\)"):
        convert_int4(model, 32)
    converted = [name for name, m in model.named_modules() if isinstance(m, Int4Linear)]
    assert converted == ["0", "1.mlp.0", "1.mlp.2", "2.mlp.0", "2.mlp.2", "3"]
    model.to(dtype)
    x = torch.randn(2, 7, 32, generator=gen).to(dtype)
    with torch.no_grad():
        got = model(x)
        ref64 = _dequantized_float_model(model, float_model, torch.float64)(x.double())
        ref_lowp = _dequantized_float_model(model, float_model, dtype)(x)
    assert got.dtype == dtype
    assert_error_rule(got, ref64, ref_lowp)


def test_convert_int4_keeps_transformer_encoder_layer_linears_for_its_fast_path(gen):
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 1,
                                  enable_nested_tensor=False).eval()
    with pytest.warns(UserWarning, match="linear1 \\(read by its nn.TransformerEncoderLayer\\)"):
        convert_int4(model, 32)
    assert not any(isinstance(m, Int4Linear) for m in model.modules())
    model(torch.randn(2, 5, 32, generator=gen))  # the eval fast path still finds linear1.weight


def test_convert_int4_skip_convs_sharing_and_grouped_convs(gen):
    shared = _linear(gen, 32, 32)
    model = nn.Sequential(nn.Conv2d(4, 32, 1), nn.Conv2d(32, 32, 3, groups=32), nn.Flatten(2), nn.Identity())
    model.head = nn.Sequential(shared, nn.ReLU(), shared, _linear(gen, 32, 4))
    with pytest.warns(UserWarning, match=r"kept in float: 1 \(groups=32\)"):
        convert_int4(model, 32, skip=("head.3",))
    assert isinstance(model[0], Int4Conv2d) and type(model[1]) is nn.Conv2d
    assert isinstance(model.head[0], Int4Linear) and model.head[0] is model.head[2], "a shared layer stays shared"
    assert type(model.head[3]) is nn.Linear
    only_linears = nn.Sequential(nn.Conv2d(4, 32, 1), nn.Flatten(), _linear(gen, 32, 4))
    convert_int4(only_linears, 32, convs=False)
    assert type(only_linears[0]) is nn.Conv2d and isinstance(only_linears[2], Int4Linear)
    skipped = nn.Sequential(nn.Sequential(_linear(gen, 32, 32)), _linear(gen, 32, 4))
    convert_int4(skipped, 32, skip=["0"])  # a name covers everything under it
    assert type(skipped[0][0]) is nn.Linear and isinstance(skipped[1], Int4Linear)


def test_convert_int4_progress_bar(capsys, gen):
    convert_int4(nn.Sequential(*[_linear(gen, 32, 32) for _ in range(3)]), 32, progress=True)
    assert "convert_int4" in capsys.readouterr().err
    convert_int4(nn.Sequential(*[_linear(gen, 32, 32) for _ in range(3)]), 32)
    assert capsys.readouterr().err == "", "quiet where stderr is not a terminal"


# --- bad input -----------------------------------------------------------------------------------

def _nan_linear():
    layer = nn.Linear(64, 4)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    return layer


_LAYER = Int4Linear.from_linear(nn.Linear(64, 4), 32)
_CONV = Int4Conv2d.from_conv2d(nn.Conv2d(4, 8, 3), None)


@pytest.mark.parametrize("make,error,match", [
    (lambda: Int4Linear.from_linear(nn.Conv2d(4, 4, 3)), TypeError, "linear must be a torch.nn.Linear, got Conv2d"),
    (lambda: Int4Conv2d.from_conv2d(nn.Linear(4, 4)), TypeError, "conv must be a torch.nn.Conv2d, got Linear"),
    (lambda: Int4Linear.from_linear(nn.Linear(96, 4), 64), ValueError, "group_size 64 must divide in_features 96"),
    (lambda: Int4Linear.from_linear(nn.Linear(129, 4), 32), ValueError, "in_features 129 is odd .* padded to 130"),
    (lambda: Int4Linear.from_linear(nn.Linear(96, 4), 33), ValueError, "group_size must be one of"),
    (lambda: Int4Linear.from_linear(_nan_linear(), 32), ValueError, "linear.weight must be finite"),
    (lambda: Int4Linear.from_linear(nn.Linear(64, 4), climbq_bits=8), ValueError, r"climbq_bits must lie in \[1, 4\]"),
    (lambda: Int4Conv2d.from_conv2d(nn.Conv2d(4, 8, 3, groups=2)), ValueError, "groups=1 .* groups=2"),
    (lambda: _LAYER(torch.randn(2, 63)), ValueError, r"x must have shape \(\.\.\., 64\)"),
    (lambda: _LAYER(torch.ones(2, 64, dtype=torch.int32)), TypeError, "x must be a floating tensor"),
    (lambda: _LAYER(torch.randn(2, 64, device="meta")), ValueError, "x is a meta tensor"),
    (lambda: _CONV(torch.randn(2, 3, 8, 8)), ValueError, r"x must have shape \(batch, 4, H, W\)"),
    (lambda: _CONV(torch.randn(1, 4, 2, 2)), ValueError, "smaller than the dilated kernel"),
    (lambda: convert_int4(nn.Sequential(_nan_linear()), 32), ValueError, "layer '0': linear.weight must be finite"),
    (lambda: convert_int4(nn.Sequential(nn.Linear(64, 4)), 48), ValueError, "group_size must be one of"),
    (lambda: convert_int4(nn.Sequential(nn.Linear(64, 4)), skip=("fc",)), ValueError, r"skip names .* \['fc'\]"),
    (lambda: convert_int4(nn.Linear(64, 4)), ValueError, "model is itself a Linear"),
    (lambda: convert_int4(torch.randn(3)), TypeError, "model must be a torch.nn.Module"),
])
def test_bad_input_fails_clearly(make, error, match):
    with pytest.raises(error, match=match):
        make()

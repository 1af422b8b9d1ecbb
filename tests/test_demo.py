"""climbq_kernels.demo's pieces, without training (the full run is in test_cli.py)."""

import torch

import climbq_kernels as cq
from climbq_kernels import demo


def test_small_cnn_takes_8x8_and_28x28_and_quantizes_with_a_float_classifier():
    for size in (8, 28):
        model = demo.small_cnn(10, size)
        assert model(torch.randn(4, 1, size, size)).shape == (4, 10)
    model = cq.quantize_(demo.small_cnn(10, 8), cq.ClimbQConfig())
    assert type(model[-1]) is torch.nn.Linear
    with cq.class_labels(torch.arange(4)):
        assert model(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_variants_share_bits_and_differ_only_in_method_and_loss():
    variants = demo.variants(3)
    assert list(variants) == ["lsq_ce", *demo.CLIMBQ_VARIANTS]
    for _, config, _ in variants.values():
        assert config.w_bits == config.a_bits == 3
    assert [homovar for _, _, homovar in variants.values()] == [False, False, True, False, False]
    assert variants["climbq_relu"][1].act_form == "relu" and variants["climbq_class_std"][1].sigma == "class_std"


def test_scores_average_classes_within_each_group():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 0, 1, 0, 0, 0])
    groups = {"head": [0], "middle": [1], "tail": [2]}
    result = demo.scores(predictions, labels, 3, groups)
    assert result["per_class"] == [100.0, 50.0, 0.0]
    assert (result["head"], result["middle"], result["tail"]) == (100.0, 50.0, 0.0)
    assert abs(result["overall"] - 50.0) < 1e-9


def test_conclusions_call_a_sign_change_across_seeds_noise():
    def row(gaps, **extra):
        return {"name": "x", "tail_minus_lsq": {"mean": sum(gaps) / len(gaps), "min": min(gaps), "max": max(gaps)},
                "model_bytes": {"mean": 100.0}, **extra}
    summary = {"float32": row([0]), "climbq_ce": row([1.0, 2.0, 3.0]), "climbq_homovar": row([-1.0, 2.0, 3.0]),
               "int4": row([0], agreement={"mean": 100.0, "min": 100.0})}
    lines = demo.conclusions(summary, 3)
    assert "above LSQ on every one of 3 seeds" in lines[0]
    assert "not distinguishable from seed noise" in lines[1]

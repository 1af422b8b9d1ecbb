"""Serve a model with INT4 weights: convert_int4, compare outputs and size, save and load it.

Builds a small convolutional classifier with an MLP head (random weights stand in for a
trained model), swaps every conv and linear layer for its packed INT4 form with
`climbq_kernels.convert_int4`, and prints how far the outputs move, how much smaller the
state dict gets, and that a saved INT4 state dict loads back into a fresh conversion exactly.
Runs on the CPU in seconds: python python/serve_int4.py
"""

import argparse
import copy
import io
import warnings

import torch
from torch import nn

import climbq_kernels as cq


def small_classifier(num_classes: int) -> nn.Module:
    """Conv stem + two conv stages + an MLP head, about 1.3M parameters."""
    def stage(c_in, c_out):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                             nn.Conv2d(c_out, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                             nn.ReLU())
    return nn.Sequential(stage(3, 64), stage(64, 128), stage(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(256, 512), nn.GELU(), nn.Linear(512, num_classes))


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    float_model = small_classifier(num_classes=10).eval()
    x = torch.randn(args.batch, 3, 32, 32)

    model = copy.deepcopy(float_model)
    with warnings.catch_warnings(record=True) as notes:  # which layers fell back to one group per row
        warnings.simplefilter("always")
        cq.convert_int4(model, args.group_size)
    for note in notes:
        print("note:", note.message)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, cq.nn.Int4Module)]
    print(f"converted {len(layers)} layers, e.g. {layers[0][0]}: {layers[0][1]}")

    with torch.no_grad():
        reference, served = float_model(x), model(x)
    rel = ((served - reference).norm() / reference.norm()).item()
    agree = (served.argmax(1) == reference.argmax(1)).float().mean().item()
    print(f"output relative error {rel:.3%}, top-1 agreement {agree:.0%}")
    print(f"state dict: float {state_dict_bytes(float_model) / 1e6:.2f} MB, "
          f"int4 {state_dict_bytes(model) / 1e6:.2f} MB")

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = cq.convert_int4(small_classifier(num_classes=10).eval(), args.group_size)
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        same = torch.equal(fresh(x), served)
    print(f"state dict saved and loaded into a fresh conversion: outputs identical = {same}")
    if not same:
        raise SystemExit("the loaded model differs from the saved one")


if __name__ == "__main__":
    main()

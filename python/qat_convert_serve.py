"""QAT, convert to INT4, save, load into a fresh model, serve: the deployment path end to end.

1. A small conv-BN-ReLU CNN trained in float on long-tailed digits (`climbq_kernels.data`),
   then fine-tuned with ClimbQ W4A4 QAT (`quantize_`, forward inside `class_labels`).
2. `convert(model)`: every quantized layer becomes an Int4Conv2d / Int4Linear holding the QAT
   weight as 4-bit codes (algorithms.md §6); activation quantizers stay in their eval form.
3. `torch.save(model.state_dict())`, then a fresh model built the same way (`quantize_` with
   the same config, then `convert`) loads it with `torch.load(..., weights_only=True)`.
4. The loaded model serves the test images: its predictions against the QAT model's, and
   images per second of the INT4 model against the float model on the CPU, timed side by side.

Runs on the CPU in under a minute: python python/qat_convert_serve.py
"""

import argparse
import copy
import io
import time

import torch
import torch.nn.functional as F

import climbq_kernels as cq
from climbq_kernels.data import long_tailed_split
from climbq_kernels.demo import small_cnn

CONFIG = cq.ClimbQConfig(w_bits=4, a_bits=4)


def train(model, x, y, epochs, lr, seed, batch=64):
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(y.numel(), generator=gen).split(batch):
            if index.numel() < 2:
                continue
            with cq.class_labels(y[index]):
                loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return loss.item()


@torch.no_grad()
def images_per_second(models: dict, x, repeats: int) -> dict:
    """Median throughput of each model on batch x, the models timed in turns within each repeat
    so that a slower moment of the machine falls on all of them."""
    times = {name: [] for name in models}
    for model in models.values():
        model(x)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            times[name].append(time.perf_counter() - start)
    return {name: x.shape[0] / sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--width", type=int, default=32, help="channels of the first convolution")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    split = long_tailed_split("digits", gamma=10, seed=args.seed)
    mean, std = split.train_images.mean(), split.train_images.std()
    x_train, y_train = (split.train_images - mean) / std, split.train_labels
    x_test, y_test = (split.test_images - mean) / std, split.test_labels
    print(f"digits, training class sizes {split.train_counts}, {y_test.numel()} balanced test images")

    torch.manual_seed(args.seed)
    float_model = small_cnn(split.num_classes, 8, args.width)
    train(float_model, x_train, y_train, args.epochs, 0.1, args.seed)
    float_model.eval()

    qat = cq.quantize_(copy.deepcopy(float_model), CONFIG)
    loss = train(qat, x_train, y_train, args.epochs, 0.02, args.seed)
    qat.eval()
    with torch.no_grad():
        qat_predictions = qat(x_test).argmax(1)
    accuracy = 100 * (qat_predictions == y_test).float().mean()
    print(f"ClimbQ W4A4 QAT: last loss {loss:.3f}, test accuracy {accuracy:.1f}%")

    cq.convert(qat)
    buffer = io.BytesIO()
    torch.save(qat.state_dict(), buffer)
    saved_bytes = buffer.tell()
    buffer.seek(0)

    served = cq.convert(cq.quantize_(small_cnn(split.num_classes, 8, args.width), CONFIG))
    served.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    served.eval()
    int4_layers = sum(isinstance(m, (cq.nn.Int4Conv2d, cq.nn.Int4Linear)) for m in served.modules())
    float_buffer = io.BytesIO()
    torch.save(float_model.state_dict(), float_buffer)
    print(f"saved the converted model: {saved_bytes:,} bytes ({int4_layers} INT4 layers) vs float32 "
          f"{float_buffer.tell():,} bytes; loaded into a fresh quantize_d + converted model")

    with torch.no_grad():
        served_predictions = served(x_test).argmax(1)
        float_predictions = float_model(x_test).argmax(1)
    same = 100 * (served_predictions == qat_predictions).float().mean().item()
    print(f"loaded INT4 model: {same:.1f}% of test predictions identical to the QAT model's; test accuracy "
          f"{100 * (served_predictions == y_test).float().mean():.1f}% (float32: "
          f"{100 * (float_predictions == y_test).float().mean():.1f}%)")

    x_serve = x_test.repeat(2, 1, 1, 1)[:1000]
    rates = images_per_second({"float32": float_model, "INT4": served}, x_serve, args.repeats)
    print(f"CPU throughput at batch {x_serve.shape[0]}, {torch.get_num_threads()} threads, medians of "
          f"{args.repeats} side-by-side runs: float32 {rates['float32']:,.0f} images/s, INT4 {rates['INT4']:,.0f} "
          f"images/s ({rates['INT4'] / rates['float32']:.2f}x)")
    if same < 99.0:
        raise SystemExit("the loaded INT4 model should predict as the QAT model did")


if __name__ == "__main__":
    main()

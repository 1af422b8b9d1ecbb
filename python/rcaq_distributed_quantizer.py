"""Two sensors, one linear classifier: train RCAQ's distributed quantizer and see what gamma buys.

Each sensor quantizes one coordinate of a correlated bivariate Gaussian to 4 indices; the fusion
decoder maps the 16 joint indices to codewords; the classifier sign(x . w) decides on the
codeword (algorithms.md §5). For gamma = 0 (Lloyd / MSE), 0.5 and 0.9 the script prints the
classification error quantization causes on held-out points, the MSE, and the same for the DP
baseline (each sensor's optimal contiguous cells). Runs on the CPU in seconds:
python python/rcaq_distributed_quantizer.py
"""

import argparse

from climbq_kernels.methods.rcaq import RCAQ, DPQuantizer, make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=4, help="indices per sensor")
    parser.add_argument("--train", type=int, default=1000)
    args = parser.parse_args()

    task = make_task("bivariate", n_train=args.train, n_test=5000, seed=0)
    print("gamma | RCAQ test 0-1 | RCAQ MSE | sweeps | DP test 0-1 | DP MSE")
    for gamma in (0.0, 0.5, 0.9):
        quantizer = RCAQ((args.rate, args.rate), gamma, task.w).fit(task.x_train)
        indices = quantizer.encode(task.x_test)  # (N,) joint index: what the sensors send
        codewords = quantizer.decode(indices)  # (N, 2): what the fusion centre reconstructs
        assert codewords.shape == task.x_test.shape
        baseline = DPQuantizer((args.rate, args.rate), gamma, task.w).fit(task.x_train)
        print(f"{gamma:>5} | {quantizer.zero_one_error(task.x_test):>13.3f} | {quantizer.mse(task.x_test):>8.3f} | "
              f"{quantizer.n_iter_:>6} | {baseline.zero_one_error(task.x_test):>11.3f} | "
              f"{baseline.mse(task.x_test):>6.3f}")


if __name__ == "__main__":
    main()

"""`climbq demo rcaq`: RCAQ against gamma = 0 (Lloyd / MSE) and the DP baseline, and its run time
against the DP's as N grows (algorithms.md §5).

1. Quality. On the two synthetic tasks of `data.py` (a Gaussian mixture and a correlated
   bivariate Gaussian, two sensors of `--rate` indices each), for every gamma of the sweep and
   every seed: fit `RCAQ` and `DPQuantizer` (each sensor's optimal contiguous cells on its own
   line, then the same decoder step) on the training draw; report the 0-1 error
   [sign(x . w) != sign(c . w)] on the training and test draws, the generalisation gap
   (test - train) and the test MSE, as mean +- standard deviation over seeds.
2. Run time. For N in `--timing-sizes` training points of the bivariate task: the DP baseline
   with k = rate cells per sensor (O(k N^2)), the DP with k = N / 16 cells (k growing with N:
   O(N^3)) and a full RCAQ fit (every sweep to convergence, O(N sum R_i) per sweep). The slopes
   of log time against log N are fitted by least squares; the claim under test is that the DP
   costs a quadratic factor in N more than RCAQ.

Outputs in --out: rcaq.json (options, environment, every per-seed number, the timings and the
slopes) and rcaq.png (test error and gap against gamma; the log-log timings).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import TASKS, make_task
from .dp import DPQuantizer, dp_baseline
from .quantizer import RCAQ

QUICK = dict(train=600, test=2000, gammas="0,0.25,0.5,0.75,1", timing_sizes="128,256,512,1024")
FULL = dict(train=2000, test=10000, gammas="0,0.1,0.25,0.5,0.75,0.9,1", timing_sizes="256,512,1024,2048")
GROWING_CELLS_DIVISOR = 16
"""The DP series whose cell count grows with N uses k = N / 16 cells per sensor."""
PROTOTYPES = 32


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="climbq demo rcaq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and sweeps (under 2 minutes on a CPU)")
    parser.add_argument("--out", default="rcaq-demo", help="directory for rcaq.json and rcaq.png")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (data draw)")
    parser.add_argument("--rate", type=int, default=4, help="indices per sensor (R_1 = R_2)")
    parser.add_argument("--train", type=int, help="training points per task")
    parser.add_argument("--test", type=int, help="test points per task")
    parser.add_argument("--gammas", help="comma-separated gamma values in [0, 1]")
    parser.add_argument("--timing-sizes", help="comma-separated N for the run-time comparison")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.gammas = [float(g) for g in str(args.gammas).split(",")]
    args.timing_sizes = [int(n) for n in str(args.timing_sizes).split(",")]
    if args.seeds < 1 or args.rate < 1 or args.train < 2 or args.test < 1:
        parser.error("--seeds, --rate and --test must be >= 1 and --train >= 2")
    if any(not 0.0 <= g <= 1.0 for g in args.gammas):
        parser.error(f"--gammas must lie in [0, 1], got {args.gammas}")
    return args


def evaluate(model, task) -> dict:
    train, test = model.zero_one_error(task.x_train), model.zero_one_error(task.x_test)
    return {"train_error": train, "test_error": test, "gap": test - train, "test_mse": model.mse(task.x_test)}


def monotone(history: list[float]) -> bool:
    return all(b <= a + 1e-12 * max(1.0, abs(a)) for a, b in itertools.pairwise(history))


def quality(args, progress: tqdm) -> list[dict]:
    rows = []
    rates = (args.rate, args.rate)
    for name in TASKS:
        for seed in range(args.seeds):
            task = make_task(name, args.train, args.test, seed)
            for gamma in args.gammas:
                progress.set_postfix_str(f"{name} seed {seed} gamma {gamma}")
                rcaq = RCAQ(rates, gamma, task.w, prototypes=PROTOTYPES).fit(task.x_train)
                rows.append({"task": name, "seed": seed, "gamma": gamma, "method": "rcaq", **evaluate(rcaq, task),
                             "sweeps": rcaq.n_iter_, "converged": rcaq.converged_,
                             "objective_monotone": monotone(rcaq.objective_history_)})
                dp = DPQuantizer(rates, gamma, task.w).fit(task.x_train)
                rows.append({"task": name, "seed": seed, "gamma": gamma, "method": "dp", **evaluate(dp, task)})
                progress.update()
    return rows


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _dp_per_sensor(x, labels, cells: int) -> None:
    for i in range(x.shape[1]):
        dp_baseline(x[:, i], labels, cells, 0.5)


def timing(args, progress: tqdm) -> list[dict]:
    rows = []
    rates = (args.rate, args.rate)
    for n in args.timing_sizes:
        progress.set_postfix_str(f"timing N={n}")
        task = make_task("bivariate", n, 1, 0)
        repeats = 3 if n <= 256 else 1  # best of 3 where one run is too short to time alone
        labels = torch.sign(task.x_train @ task.w).long()
        k_growing = max(1, n // GROWING_CELLS_DIVISOR)
        rcaq = RCAQ(rates, 0.5, task.w, prototypes=PROTOTYPES)
        rows.append({
            "n": n,
            "rcaq_fit_s": _best_time(functools.partial(rcaq.fit, task.x_train), repeats),
            "dp_fixed_k_s": _best_time(functools.partial(DPQuantizer(rates, 0.5, task.w).fit, task.x_train), repeats),
            "dp_growing_k_s": _best_time(functools.partial(_dp_per_sensor, task.x_train, labels, k_growing), repeats),
            "k_growing": k_growing,
            "rcaq_sweeps": rcaq.n_iter_,
        })
        progress.update()
    return rows


def slope(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["task"], r["gamma"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1], k[2] != "rcaq"))
    for task, gamma, method in keys:
        group = [r for r in rows if (r["task"], r["gamma"], r["method"]) == (task, gamma, method)]
        entry = {"task": task, "gamma": gamma, "method": method}
        for metric in ("train_error", "test_error", "gap", "test_mse"):
            values = [r[metric] for r in group]
            entry[metric] = statistics.fmean(values)
            entry[metric + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown_tables(summary: list[dict], times: list[dict], slopes: dict) -> str:
    def cell(e, metric):
        return f"{e[metric]:.3f}±{e[metric + '_std']:.3f}"

    lines = ["| task | gamma | method | train 0-1 | test 0-1 | gap | test MSE |", "|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['task']} | {e['gamma']:g} | {e['method']} | {cell(e, 'train_error')} | "
                     f"{cell(e, 'test_error')} | {cell(e, 'gap')} | {cell(e, 'test_mse')} |")
    lines += ["", "| N | RCAQ fit (s) | sweeps | DP k=R (s) | DP k=N/16 (s) | DP(k=R)/RCAQ | DP(k=N/16)/RCAQ |",
              "|---|---|---|---|---|---|---|"]
    for t in times:
        lines.append(f"| {t['n']} | {t['rcaq_fit_s']:.4f} | {t['rcaq_sweeps']} | {t['dp_fixed_k_s']:.4f} | "
                     f"{t['dp_growing_k_s']:.4f} | {t['dp_fixed_k_s'] / t['rcaq_fit_s']:.2f} | "
                     f"{t['dp_growing_k_s'] / t['rcaq_fit_s']:.2f} |")
    lines.append("")
    lines.append("log-log slopes in N: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()))
    return "\n".join(lines)


def plot(summary: list[dict], times: list[dict], slopes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {"mixture": "tab:blue", "bivariate": "tab:orange"}
    for task, colour in colours.items():
        for method, style in (("rcaq", "-o"), ("dp", "--s")):
            es = [e for e in summary if e["task"] == task and e["method"] == method]
            gammas = [e["gamma"] for e in es]
            axes[0].errorbar(gammas, [e["test_error"] for e in es], yerr=[e["test_error_std"] for e in es],
                             fmt=style, color=colour, label=f"{task} {method}", capsize=2)
            axes[1].errorbar(gammas, [e["gap"] for e in es], yerr=[e["gap_std"] for e in es], fmt=style,
                             color=colour, label=f"{task} {method}", capsize=2)
        lloyd = next(e for e in summary if e["task"] == task and e["method"] == "rcaq" and e["gamma"] == 0.0) \
            if any(e["gamma"] == 0.0 for e in summary) else None
        if lloyd is not None:
            axes[0].axhline(lloyd["test_error"], color=colour, linestyle=":", label=f"{task} gamma=0")
    axes[0].set(xlabel="gamma", ylabel="test 0-1 error", title="classification error after quantization")
    axes[1].set(xlabel="gamma", ylabel="test - train 0-1 error", title="generalisation gap")
    axes[1].axhline(0.0, color="grey", linewidth=0.5)
    ns = [t["n"] for t in times]
    for key, label in (("rcaq_fit_s", "RCAQ fit"), ("dp_fixed_k_s", "DP, k = R"), ("dp_growing_k_s", "DP, k = N/16")):
        axes[2].loglog(ns, [t[key] for t in times], "o-", label=f"{label} (slope {slopes[key]:.2f})")
    axes[2].set(xlabel="training points N", ylabel="seconds", title="run time")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status (1 if an RCAQ fit ever increased its objective)."""
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    total = len(TASKS) * args.seeds * len(args.gammas) + len(args.timing_sizes)
    with tqdm(total=total, desc="rcaq demo", unit="fit") as progress:
        rows = quality(args, progress)
        times = timing(args, progress)
    summary = summarise(rows)
    ns = [t["n"] for t in times]
    slopes = {key: slope(ns, [t[key] for t in times]) for key in ("rcaq_fit_s", "dp_fixed_k_s", "dp_growing_k_s")}
    slopes["ratio_fixed_k"] = slopes["dp_fixed_k_s"] - slopes["rcaq_fit_s"]
    slopes["ratio_growing_k"] = slopes["dp_growing_k_s"] - slopes["rcaq_fit_s"]
    monotone_ok = all(r.get("objective_monotone", True) for r in rows)
    table = markdown_tables(summary, times, slopes)
    print(table)
    print(f"RCAQ objective non-increasing in every fit: {monotone_ok}")
    plot(summary, times, slopes, out / "rcaq.png")
    result = {
        "options": {k: v for k, v in vars(args).items()},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads()},
        "per_seed": rows, "summary": summary, "timing": times, "slopes": slopes,
        "objective_monotone": monotone_ok, "wall_s": time.perf_counter() - started,
    }
    (out / "rcaq.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'rcaq.json'} and {out / 'rcaq.png'} in {result['wall_s']:.1f} s")
    return 0 if monotone_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

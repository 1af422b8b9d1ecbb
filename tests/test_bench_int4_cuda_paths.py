"""bench/int4/int4_cuda_paths.py (the CUDA INT4 path sweep) without a GPU: its forced-path timing
helper restores the environment and skips paths that do not apply, and its plan covers every
path's batch sizes."""

import os

import torch

from .conftest import load_bench_script


def _sweep():
    return load_bench_script("int4/int4_cuda_paths")


def test_a_path_that_does_not_apply_is_skipped_and_the_environment_restored(monkeypatch):
    sweep = _sweep()
    monkeypatch.setenv("CLIMBQ_INT4_CUDA_PATH", "gemv")
    monkeypatch.delenv("CLIMBQ_INT4_MMA_SPLIT_K", raising=False)
    seen = {}

    def does_not_apply():
        seen.update(path=os.environ["CLIMBQ_INT4_CUDA_PATH"], split=os.environ["CLIMBQ_INT4_MMA_SPLIT_K"])
        raise ValueError("CLIMBQ_INT4_CUDA_PATH=mma does not apply")

    assert sweep.timed_with_env(does_not_apply, CLIMBQ_INT4_CUDA_PATH="mma", CLIMBQ_INT4_MMA_SPLIT_K="3") is None
    assert seen == {"path": "mma", "split": "3"}
    assert os.environ["CLIMBQ_INT4_CUDA_PATH"] == "gemv"
    assert "CLIMBQ_INT4_MMA_SPLIT_K" not in os.environ


def test_the_plan_reaches_every_path():
    sweep = _sweep()
    batches = {m for _, _, rows, _ in sweep.PLAN for m in rows}
    assert {1, 2}.issubset(batches)            # GEMV
    assert {3, 8, 16, 64}.issubset(batches)    # MMA, its first and last n-tile counts
    assert {128, 1024}.issubset(batches)       # dequantize + cuBLAS
    assert set(sweep.PATHS) == {"gemv", "mma", "dequantize"}


def test_without_a_gpu_it_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["int4_cuda_paths.py", "--out", str(tmp_path)])
    assert _sweep().main() == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_the_mma_kernels_swept_are_the_ones_the_dispatcher_chooses_from():
    assert _sweep().MMA_KERNELS == ("registers", "pipelined")

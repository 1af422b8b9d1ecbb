"""Launch configs of the INT4 matmul kernels, kept as data in `int4_configs.json`.

The file holds a `default` table and optional `by_shape` tables keyed "NxK" (out_features x
in_features). A table is a list of buckets sorted by `max_m`: the first bucket with
M <= max_m (null: no upper bound) gives the launch config for an M-row input:

    {"kernel": "gemv" | "gemm", "BLOCK_M", "BLOCK_N", "BLOCK_K" (input features, so
     BLOCK_K / 2 packed bytes), "SPLIT_K" (most K slices), "num_warps", "num_stages"}

`bench/int4/tune_int4_triton.py` rewrites the file on a GPU; its `note` says where the buckets
came from (tuned on the named device and date, or untuned defaults).
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

CONFIG_PATH = Path(__file__).with_name("int4_configs.json")
KERNELS = ("gemv", "gemm")
LAUNCH_KEYS = ("kernel", "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages")
MIN_DOT_SIZE = 16
"""tl.dot needs every tile side >= 16, and the GEMM feeds it BLOCK_K / 2 bytes' worth of features."""


def _power_of_two(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0


def validate_config(config: dict) -> dict:
    """Return `config` if it is a launchable config (max_m may be absent), else raise ValueError."""
    missing = [key for key in LAUNCH_KEYS if key not in config]
    if missing:
        raise ValueError(f"INT4 launch config {config} lacks {missing}")
    if config["kernel"] not in KERNELS:
        raise ValueError(f"INT4 launch config {config}: kernel must be one of {KERNELS}")
    for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps"):
        if not _power_of_two(config[key]):
            raise ValueError(f"INT4 launch config {config}: {key} must be a power of two")
    if config["BLOCK_K"] < 2:
        raise ValueError(f"INT4 launch config {config}: BLOCK_K must cover at least one packed byte")
    split_k, stages = config["SPLIT_K"], config["num_stages"]
    if not (isinstance(split_k, int) and split_k >= 1 and isinstance(stages, int) and stages >= 1):
        raise ValueError(f"INT4 launch config {config}: SPLIT_K and num_stages must be positive integers")
    if config["kernel"] == "gemm":
        if min(config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"] // 2) < MIN_DOT_SIZE:
            raise ValueError(f"INT4 launch config {config}: gemm needs BLOCK_M, BLOCK_N, BLOCK_K / 2 >= "
                             f"{MIN_DOT_SIZE} (tl.dot)")
    max_m = config.get("max_m")
    if max_m is not None and not (isinstance(max_m, int) and max_m >= 1):
        raise ValueError(f"INT4 launch config {config}: max_m must be a positive integer or null")
    return config


def validate_table(table: list, where: str) -> list[dict]:
    """Check one bucket table: non-empty, valid buckets, max_m increasing, null only last."""
    if not isinstance(table, list) or not table:
        raise ValueError(f"INT4 config table {where} must be a non-empty list of buckets")
    bounds = [validate_config(bucket).get("max_m") for bucket in table]
    finite = bounds[:-1] if bounds[-1] is None else bounds
    if None in finite or any(low >= high for low, high in itertools.pairwise(finite)):
        raise ValueError(f"INT4 config table {where}: max_m must increase, null (unbounded) only last")
    return table


def validate_configs(data: dict) -> dict:
    """Check a whole config file's content; return it."""
    validate_table(data.get("default"), "default")
    for shape, table in data.get("by_shape", {}).items():
        validate_table(table, f"by_shape[{shape!r}]")
    return data


@functools.cache
def load_configs(path: str = str(CONFIG_PATH)) -> dict:
    """The parsed, validated config file (read once per path)."""
    return validate_configs(json.loads(Path(path).read_text()))


def _bucket(table: list[dict], m: int) -> dict | None:
    return next((b for b in table if b.get("max_m") is None or m <= b["max_m"]), None)


def pick_config(m: int, n: int, k: int, configs: dict | None = None) -> dict:
    """The launch config for an (m, k) x (n, k)^T product.

    The shape's own table if it has a bucket for m, else the default table's bucket; when no
    bucket reaches m, the default table's last (largest) bucket.
    """
    configs = load_configs() if configs is None else configs
    shape_table = configs.get("by_shape", {}).get(f"{n}x{k}", [])
    return _bucket(shape_table, m) or _bucket(configs["default"], m) or configs["default"][-1]

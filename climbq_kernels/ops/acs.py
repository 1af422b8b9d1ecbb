"""ACS per-sample score ops (algorithms.md §2): `climbq::error_vector_score`, `climbq::disagreement_score`.

Each is one fused pass per row on the kernel backends (softmax statistics, then the L2 norm of
the softmax difference; the B x K softmax is never written). Scores have no gradient: no autograd
formula is registered, and the public functions in `climbq_kernels.methods.acs` detach the
logits before calling, so a logits tensor that requires grad is scored like its value.
"""

from __future__ import annotations

from torch import Tensor

from ..reference import acs as reference_acs
from ._dispatch import native, register_kernels, run, triton_launcher
from ._eager import custom_op, eager

register_kernels({
    "error_vector_score": {
        "reference": reference_acs.error_vector_score,
        "cpu": native("error_vector_score"),
        "triton": triton_launcher("acs", "error_vector_score"),
    },
    "disagreement_score": {
        "reference": reference_acs.disagreement_score,
        "cpu": native("disagreement_score"),
        "triton": triton_launcher("acs", "disagreement_score"),
    },
})


@custom_op("climbq::error_vector_score")
def error_vector_score(logits: Tensor, labels: Tensor) -> Tensor:
    """EVS_i = ||softmax(logits_i) - onehot(labels_i)||_2: (B, K), int64 (B,) in [0, K) -> (B,), logits' dtype."""
    return run("error_vector_score", logits, logits, labels)


@error_vector_score.register_fake
def _(logits, labels):
    return logits.new_empty(logits.shape[0])


@custom_op("climbq::disagreement_score")
def disagreement_score(logits_q: Tensor, logits_fp: Tensor) -> Tensor:
    """DS_i = ||softmax(logits_q,i) - softmax(logits_fp,i)||_2: two (B, K) of one dtype -> (B,)."""
    return run("disagreement_score", logits_q, logits_q, logits_fp)


@disagreement_score.register_fake
def _(logits_q, logits_fp):
    return logits_q.new_empty(logits_q.shape[0])


error_vector_score_eager = eager(error_vector_score)
disagreement_score_eager = eager(disagreement_score)

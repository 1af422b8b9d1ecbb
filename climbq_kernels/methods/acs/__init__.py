"""ACS: adaptive coreset selection for faster quantization-aware training (algorithms.md §2).

QAT trains each epoch on a coreset: every R epochs, score every training sample with the error
vector score (how far the quantized model's softmax is from the label) and the disagreement score
(how far it is from the float model's softmax), blend them with beta(t) moving from EVS to DS,
and keep the top share of each class. The scores run as fused ops on every backend
(`use_backend("reference" | "cpu" | "triton")`).

    sampler = CoresetSampler(qat_model, float_model, score_loader, train_labels, epochs=E, fraction=0.1)
    loader = DataLoader(train_set, batch_size=64, sampler=sampler)
"""

from .sampler import SELECTIONS, CoresetSampler
from .scores import SCHEDULES, acs_beta, acs_score, combine_scores, disagreement_score, error_vector_score
from .scoring import DatasetScores, score_dataset
from .selection import coreset_size, select_coreset

__all__ = ["SCHEDULES", "SELECTIONS", "CoresetSampler", "DatasetScores", "acs_beta", "acs_score", "combine_scores",
           "coreset_size", "disagreement_score", "error_vector_score", "score_dataset", "select_coreset"]

"""Evaluation shared by every task: ranks of held-out items → Recall/HR/NDCG/MRR, plus the
cheap references (most-popular, EASE, item-KNN) that give those numbers a scale, and the
same references served under an export's signature names (``served``: what ``tfrec-p5
train`` prints beside the model).

    from tfrec_p5.evaluation import EASE, full_ranking_metrics
"""

from tfrec_p5.evaluation.ranking import (
    cross_fitted_metrics,
    expected_ranking_metrics,
    factorized_topk_accuracy,
    full_ranking_metrics,
    group_by_row,
    metrics_from_ranks,
    pad_lists,
    ranks_of_targets,
    sample_negatives,
    sampled_ranking_metrics,
    single_target_metrics,
)
from tfrec_p5.evaluation.rating import RatingErrors, rating_metrics
from tfrec_p5.evaluation.references import (
    EASE,
    FeaturePopularity,
    FeatureProfile,
    ItemKNN,
    MostPopular,
)
from tfrec_p5.evaluation.served import (
    ServedReference,
    bias_baseline,
    next_item_references,
    retrieval_references,
)
from tfrec_p5.evaluation.signatures import (
    PROTOCOLS,
    decode_strings,
    evaluate_after_history,
    evaluate_next_items,
    evaluate_rank,
    evaluate_recommend,
    evaluate_signature,
    parse_protocol,
    predict_ratings,
)
from tfrec_p5.evaluation.streamed import (
    StreamedBiasBaseline,
    evaluate_signature_stream,
    streamed_bias_baseline,
)

__all__ = [
    "EASE", "FeatureProfile", "FeaturePopularity", "ItemKNN", "MostPopular", "PROTOCOLS",
    "decode_strings", "evaluate_after_history", "expected_ranking_metrics",
    "evaluate_next_items", "evaluate_rank", "evaluate_recommend", "evaluate_signature",
    "factorized_topk_accuracy", "full_ranking_metrics", "parse_protocol", "predict_ratings",
    "RatingErrors", "rating_metrics",
    "cross_fitted_metrics", "group_by_row", "metrics_from_ranks", "pad_lists",
    "ranks_of_targets", "sample_negatives",
    "sampled_ranking_metrics", "single_target_metrics", "ServedReference", "bias_baseline",
    "next_item_references",
    "retrieval_references", "StreamedBiasBaseline", "evaluate_signature_stream",
    "streamed_bias_baseline",
]

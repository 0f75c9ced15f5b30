"""Task models built on the shared towers.

The package exports the rating model, the simplest entry point; the multi-task and
sequential models are in ``tfrec_p5.models.unified`` and ``tfrec_p5.models.sequential``:

    from tfrec_p5.models import RatingConfig, train_rating, evaluate_rating
"""

from tfrec_p5.models.rating import (
    ClipRating,
    RatingConfig,
    TrainedRating,
    build_rating_model,
    compile_rating_model,
    evaluate_rating,
    evaluate_rating_stream,
    predict_ratings,
    stream_refusals,
    train_rating,
    train_rating_stream,
)

__all__ = ["ClipRating", "RatingConfig", "TrainedRating", "build_rating_model",
           "compile_rating_model", "evaluate_rating", "evaluate_rating_stream",
           "predict_ratings", "stream_refusals", "train_rating", "train_rating_stream"]

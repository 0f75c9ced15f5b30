"""``Config``: strict keys, typed and ranged fields, and no option that does nothing."""

from __future__ import annotations

import dataclasses

import pytest

import tfrec_p5  # noqa: F401  (conftest.py imported it before TensorFlow)
from tfrec_p5.models.rating import RatingConfig
from tfrec_p5.models.sequential import SequentialConfig
from tfrec_p5.models.unified import UnifiedConfig
from tfrec_p5.pretraining.finetuner import FinetuneConfig
from tfrec_p5.pretraining.pretrainer import PretrainConfig

CONFIGS = [RatingConfig, UnifiedConfig, SequentialConfig, PretrainConfig, FinetuneConfig]


@pytest.mark.parametrize("cls", CONFIGS)
def test_defaults_are_valid_and_round_trip(cls):
    config = cls()
    assert cls.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("cls, values, message", [
    (RatingConfig, {"embedding_dim": -4}, "RatingConfig.embedding_dim must be >= 1"),
    (RatingConfig, {"learning_rate": "fast"}, "learning_rate must be a number"),
    (RatingConfig, {"learning_rate": float("inf")}, "learning_rate must be finite"),
    (RatingConfig, {"epochs": 2.5}, "epochs must be an integer"),
    (RatingConfig, {"use_biases": "yes"}, "use_biases must be true or false"),
    (RatingConfig, {"dropout": 1.0}, "dropout must be below 1"),
    (RatingConfig, {"hidden_units": [64, 0]}, "hidden_units must be >= 1"),
    # An integer 0 given to a float field: the bound named is the field's, not the value's.
    (RatingConfig, {"learning_rate": 0}, "RatingConfig.learning_rate must be > 0, got 0"),
    (SequentialConfig, {"ema_momentum": 0}, "ema_momentum must be > 0, got 0"),
    (UnifiedConfig, {"weights": {"rating": -1}}, "weights must be >= 0"),
    (UnifiedConfig, {"rating": {"batch_size": 0}}, "RatingConfig.batch_size must be >= 1"),
    (SequentialConfig, {"max_len": 0}, "max_len must be >= 1"),
    (PretrainConfig, {"epochs": 0}, "epochs must be >= 1"),
    (FinetuneConfig, {"backbone_lr_scale": -0.1}, "backbone_lr_scale must be >= 0"),
    (RatingConfig, {"embeding_dim": 8}, "unknown RatingConfig config key"),
])
def test_bad_fields_are_refused_naming_them(cls, values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        cls.from_dict(values)


@pytest.mark.parametrize("cls, values, message", [
    (UnifiedConfig, {"temperature": 0.1},
     "temperature does nothing with retrieval_loss='squared'"),
    (UnifiedConfig, {"retrieval_loss": "softmax", "unobserved_weight": 2.0},
     "unobserved_weight does nothing with retrieval_loss='softmax'"),
    (UnifiedConfig, {"list_size": 8}, "list_size does nothing with listwise=None"),
    (UnifiedConfig, {"history": False, "leave_target_out": True},
     "leave_target_out does nothing with history=False"),
    (SequentialConfig, {"loss": "softmax", "num_negatives": 50},
     "num_negatives does nothing with loss='softmax'"),
])
def test_an_option_the_chosen_variant_ignores_cannot_be_set(cls, values, message):
    with pytest.raises(ValueError, match=message):
        cls.from_dict(values)


def test_the_same_options_are_fine_for_their_variant():
    assert UnifiedConfig(retrieval_loss="softmax", temperature=0.1).temperature == 0.1
    assert UnifiedConfig(listwise="softmax", list_size=8).list_size == 8
    assert SequentialConfig(loss="sampled", num_negatives=50).num_negatives == 50
    # replace() checks too: switching the variant back is refused while its option is set.
    with pytest.raises(ValueError, match="does nothing"):
        UnifiedConfig(retrieval_loss="softmax", temperature=0.1).replace(
            retrieval_loss="squared")
    assert dataclasses.replace(UnifiedConfig(), epochs=3).epochs == 3


def test_a_renamed_key_is_read_as_its_new_name_and_said():
    for cls in (RatingConfig, UnifiedConfig):
        with pytest.warns(FutureWarning, match="'refit_full' is now 'refit'"):
            config = cls.from_dict({"refit_full": True})
        assert config.refit is True
        with pytest.raises(ValueError, match="both 'refit_full' and its new name 'refit'"):
            cls.from_dict({"refit_full": True, "refit": False})

"""Gen-AF / the shared fine-tuning loop: validation hold-out, epoch selection, the stage-2 probe set."""

from __future__ import annotations

import pytest
import torch

from daebench.data import ImageData
from daebench.encoders import build_encoder
from daebench.defenses.base import DefenseContext
from daebench.defenses.genaf import GenAF
from daebench.defenses.pgd_at import PGDAT
from tests.conftest import digits_subset


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return digits_subset(200, 40)


def test_validation_is_held_out_of_training_and_only_when_a_rule_selects_on_it(digits):
    last = PGDAT(PGDAT.resolve_params("tiny"), seed=0).fine_tune_split(digits)
    assert last.x_val is None and len(last.x_train) == 200
    split = PGDAT(PGDAT.resolve_params("tiny", {"selection": "validation"}), seed=0).fine_tune_split(digits)
    assert len(split.x_val) == 20 and len(split.x_train) == 180
    rows = sorted(bytes(x.numpy()) for x in torch.cat([split.x_train, split.x_val]))
    assert rows == sorted(bytes(x.numpy()) for x in digits.x_train)  # a partition: nothing trained on is validated
    # Gen-AF's stage 2 selects on validation by default, so the hold-out exists with stage 1 kept `last`
    assert GenAF(GenAF.resolve_params("tiny"), seed=0).fine_tune_split(digits).x_val is not None
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        PGDAT(PGDAT.resolve_params("tiny", {"selection": "validation", "validation_fraction": 0.999}),
              seed=0).fine_tune_split(digits)


def test_selection_keeps_the_best_scoring_epoch(digits, monkeypatch):
    defense = PGDAT(PGDAT.resolve_params("tiny", {"epochs": 3, "steps": 1, "selection": "validation",
                                                  "batch_size": 100}), seed=0)
    scores = iter([0.2, 0.7, 0.5])
    kept = {}

    def score(self, encoder, head, x, y):
        value = next(scores)
        kept[value] = {k: v.clone() for k, v in encoder.state_dict().items()}
        assert len(x) == 20  # scored on the held-out part
        return value

    monkeypatch.setattr(PGDAT, "selection_score", score)
    torch.manual_seed(0)
    encoder, _, info = defense.fine_tune(build_encoder("resnet18", width=4), digits)
    assert info["selected_epoch"] == 2 and info["selection_scores"] == [0.2, 0.7, 0.5]
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(v, kept[0.7][k])


def test_selection_options_stay_out_of_keys_at_their_old_values():
    dump = PGDAT.resolve_params("tiny").model_dump()
    assert not {"selection", "validation_fraction", "selection_eps", "amp", "channels_last"} & set(dump)
    assert PGDAT.resolve_params("tiny", {"selection": "test"}).model_dump()["selection"] == "test"


def test_stage2_probe_set_comes_from_probe_data_when_named(digits):
    defense = GenAF(GenAF.resolve_params("tiny", {"probe_data": "other", "probe_samples": 7}), seed=0)
    assert GenAF.extra_datasets(defense.params) == ["other"]
    split = defense.fine_tune_split(digits)
    with pytest.raises(ValueError, match="was not loaded"):
        defense.probe_set(split, digits.num_classes)
    other = ImageData("o", digits.x_test, digits.y_test, digits.x_test[:2], digits.y_test[:2], digits.num_classes)
    defense = GenAF(defense.params, context=DefenseContext(extra_data={"other": other}))
    x, y = defense.probe_set(split, digits.num_classes)
    assert len(x) == 7 and torch.equal(y, digits.y_test[:7])
    with pytest.raises(ValueError, match="cannot be read as D_f classes"):
        defense.probe_set(split, 3)
    assert GenAF.extra_datasets(GenAF.resolve_params("tiny")) == []


def test_stage2_moves_only_the_unfrozen_parameters_of_the_least_sensitive_layers(digits, monkeypatch):
    from daebench.defenses import genaf

    defense = GenAF(GenAF.resolve_params("tiny", {"epochs": 1, "batch_size": 64, "probe_samples": 32,
                                                  "stage2_epochs": 1, "stage2_selection": "last"}), seed=0)
    seen = {}
    real = GenAF._finetune_layers

    def spy(self, model, trainable, data, split, generator):
        seen["before"] = {n: q.detach().clone() for n, q in genaf._released_parameter_names(model)}
        seen["trainable"] = set(trainable)
        return real(self, model, trainable, data, split, generator)

    monkeypatch.setattr(GenAF, "_finetune_layers", spy)
    torch.manual_seed(0)
    model = defense.defend(build_encoder("resnet18", width=4), digits)
    info = model.info
    scores = info["stage2_sensitivity"]
    assert len(info["stage2_layers"]) == int(0.2 * len(scores)) == 4
    assert max(scores[n] for n in info["stage2_layers"]) <= min(v for k, v in scores.items() if k not in info["stage2_layers"])
    after = {f"0.{n}": q for n, q in model.branches[0].backbone.named_parameters()}
    moved = {n for n, q in after.items() if not torch.equal(q, seen["before"][n])}
    assert moved and moved <= seen["trainable"]


@pytest.mark.parametrize("mode, moves", [("eval", False), ("train", True)])
def test_attack_mode_train_attacks_on_batch_statistics_as_madrys_pgd_at(mode, moves):
    from daebench.heads import make_head

    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=4)
    head = make_head(encoder.feature_dim, 10)
    defense = PGDAT(PGDAT.resolve_params("tiny", {"attack_mode": mode}), seed=0)
    before = encoder.backbone.bn1.running_mean.clone()
    x_adv = defense.ce_adversarial_examples(encoder, head, torch.rand(8, 3, 16, 16), torch.arange(8)).x_adv
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert (not torch.equal(before, encoder.backbone.bn1.running_mean)) == moves
    assert encoder.training and head.training  # back in train mode for the step
    assert ("attack_mode" in defense.params.model_dump()) == moves  # out of the key at its old value

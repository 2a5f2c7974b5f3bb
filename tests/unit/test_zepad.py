"""ZePAD's pieces: RFDM fusion against the paper's formula, the detector, the branches it asks for."""

from __future__ import annotations

import math

import pytest
import torch

from daebench.config import EncoderSpec
from daebench.defenses.base import DefenseContext, Fusion
from daebench.defenses.zepad import ZePAD, rfdm_weight

FUSION = Fusion(method="rfdm", mpae=[0, 1], bmp=2, threshold=0.1)


def test_rfdm_matches_equations_7_and_8():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 5, generator=g) for _ in range(3)]
    fused = ZePAD.fuse(logits, FUSION)
    for n in range(4):
        c = [rfdm_weight(float(lg[n].softmax(0).max())) for lg in logits]
        expected = sum(ci / sum(c) * lg[n] for ci, lg in zip(c, logits))
        torch.testing.assert_close(fused[n], expected)
    assert rfdm_weight(0.5) == pytest.approx(0.5) and rfdm_weight(1.0) == pytest.approx(math.exp(1.5))


def test_confident_branch_dominates_rfdm_and_equal_is_the_mean():
    sure = torch.tensor([[10.0, 0.0, 0.0]])
    unsure = torch.tensor([[0.0, 0.4, 0.0]])
    assert ZePAD.fuse([sure, unsure, unsure], FUSION).argmax(1).item() == 0
    torch.testing.assert_close(ZePAD.fuse([sure, unsure], Fusion(method="equal")), (sure + unsure) / 2)
    assert ZePAD.fuse([sure, unsure, unsure], Fusion(method="inverse_entropy")).argmax(1).item() == 0
    # the released confidence.py weights by the entropy itself: the unsure branches dominate
    # (Table S3's "entropy is worst")
    assert ZePAD.fuse([sure, unsure, unsure], Fusion(method="entropy")).argmax(1).item() == 1


def test_detector_flags_when_mpae_is_more_confident_than_bmp_by_the_threshold():
    mpae_a, mpae_b = torch.tensor([0.9, 0.5, 0.6]), torch.tensor([0.7, 0.5, 0.6])
    bmp = torch.tensor([0.6, 0.5, 0.55])
    flagged = ZePAD.detect([mpae_a, mpae_b, bmp], FUSION)
    assert flagged.tolist() == [True, False, False]  # 0.8-0.6 > 0.1; 0.0; 0.05
    torch.testing.assert_close(ZePAD.detection_score([mpae_a, mpae_b, bmp], FUSION), torch.tensor([0.2, 0.0, 0.05]))
    assert ZePAD.detect([mpae_a], Fusion(method="rfdm", mpae=[0], bmp=None)) is None


def _byol_partner() -> str:
    from daebench.encoders.ssl import SSL_METHODS

    return "nnclr" if "nnclr" in SSL_METHODS else "simclr"  # NNCLR lands with the encoder zoo


@pytest.mark.parametrize("victim_method, partner", [("simclr", "byol"), ("byol", _byol_partner())])
def test_fallback_partners_and_bmp_encoder_without_the_released_data(victim_method, partner):
    """No `imagenet100` / `cifar10` in the grid: the paper's partner on the victim's D_p and
    the defender's own SimCLR on D_f."""
    victim = EncoderSpec(method=victim_method, dataset="cifar10-subset", width=16, params={"epochs": 30, "temperature": 0.2})
    extra = ZePAD.auxiliary_encoders(ZePAD.Params(), victim, "gtsrb", datasets={"cifar10-subset", "gtsrb"})
    assert [(a.spec.method, a.spec.dataset, a.public) for a in extra] == [(partner, "cifar10-subset", True),
                                                                          ("simclr", "gtsrb", False)]
    assert extra[0].spec.width == 16 and extra[0].spec.params == {"epochs": 30}  # shares sizes, not hyper-parameters
    assert extra[1].seed_offset == 1  # the defender's own run, not a copy of the victim


def test_released_sources_where_the_grid_has_their_data():
    """The released code: BYOL pre-trained on ImageNet-100 for every victim; the public
    SimCLR-CIFAR10 encoder as BMP, which for a SimCLR-CIFAR10 victim is the victim itself."""
    victim = EncoderSpec(method="simclr", dataset="cifar10", width=16, params={"epochs": 30})
    extra = ZePAD.auxiliary_encoders(ZePAD.Params(), victim, "stl10", datasets={"cifar10", "stl10", "imagenet100"})
    assert [(a.spec.method, a.spec.dataset, a.public) for a in extra] == [("byol", "imagenet100", True),
                                                                          ("simclr", "cifar10", False)]
    assert extra[1].seed_offset == 0 and extra[1].spec == victim.model_copy(update={"name": "simclr-cifar10"})


def test_explicit_sources_take_any_encoder_spec_and_reject_bad_ones():
    from daebench.errors import ConfigError

    victim = EncoderSpec(method="simclr", dataset="cifar10", width=16)
    params = ZePAD.Params(partners=[{"checkpoint": "ckpts/byol-imagenet100.ckpt"}], bmp={"method": "simclr", "dataset": "svhn"})
    partner, bmp = ZePAD.auxiliary_encoders(params, victim, "svhn")
    assert partner.spec.checkpoint == "ckpts/byol-imagenet100.ckpt" and partner.spec.width == 16 and partner.public
    assert (bmp.spec.method, bmp.spec.dataset, bmp.public) == ("simclr", "svhn", False)
    with pytest.raises(ConfigError, match="invalid encoder spec in `bmp`"):
        ZePAD.auxiliary_encoders(ZePAD.Params(bmp={"method": "simclr"}), victim, "svhn")


def test_ablation_switches_drop_branches():
    victim = EncoderSpec(method="simclr", dataset="cifar10")
    assert ZePAD.auxiliary_encoders(ZePAD.Params(mpae_branch=False, bmp_branch=False), victim, "cifar10") == []
    only_bmp = ZePAD.auxiliary_encoders(ZePAD.Params(mpae_branch=False), victim, "cifar10")
    assert [a.public for a in only_bmp] == [False]
    two = ZePAD.auxiliary_encoders(ZePAD.Params(aux_methods=["byol", "simclr"]), victim, "cifar10")
    assert len(two) == 3


def test_generator_source_fine_tunes_on_x_plus_a_universal_perturbation():
    """adv_source: generator (Algorithm 1): the MPAE encoders train on x + G within eps."""
    from tests.conftest import digits_subset
    from daebench.encoders import build_encoder
    from daebench.defenses import zepad

    data = digits_subset(96, 32)
    params = ZePAD.resolve_params("tiny", {"epochs": 1, "batch_size": 48, "adv_source": "generator",
                                           "generator_params": {"widths": [16, 8], "epochs": 1, "batch_size": 48}})
    torch.manual_seed(0)
    defense = ZePAD(params, context=DefenseContext(seed=0, auxiliaries=tuple(build_encoder("resnet18", width=8)
                                                                            for _ in range(2))))
    seen = []
    real_pgd = zepad._GenAFStageOne.pgd

    def spy(self, objective, x, *a, **k):
        out = real_pgd(self, objective, x, *a, **k)
        seen.append((out.x_adv - x).abs().max().item())
        return out

    made = []
    real_g = ZePAD.generator_perturbation

    def count(self, encoder, data, index):
        delta = real_g(self, encoder, data, index)
        made.append(delta)
        return delta

    zepad._GenAFStageOne.pgd = spy
    ZePAD.generator_perturbation = count
    try:
        model = defense.defend(build_encoder("resnet18", width=8), data)
    finally:
        zepad._GenAFStageOne.pgd = real_pgd
        ZePAD.generator_perturbation = real_g
    assert len(model.branches) == 3 and seen
    assert len(made) == 2 and all(d.shape == (1, 3, 16, 16) for d in made)  # one G per MPAE encoder, universal
    assert max(seen) <= params.eps + 1e-6 and max(seen) > 0


def test_a_pinned_lr_goes_to_partners_only_with_its_optimiser():
    """The tiny profile runs every method on Adam, so a pinned Adam lr is shared; in the
    paper profiles SimCLR (LARS) and MoCo v2+ (SGD) differ, so the partner keeps its own."""
    victim = EncoderSpec(method="simclr", dataset="cifar10", params={"epochs": 3, "lr": 1e-3, "temperature": 0.2})
    tiny = ZePAD.auxiliary_encoders(ZePAD.Params(aux_methods=["mocov2plus"]), victim, "cifar10", profile="tiny")
    assert [a.spec.params for a in tiny] == [{"epochs": 3, "lr": 1e-3}] * 2
    paper = ZePAD.auxiliary_encoders(ZePAD.Params(aux_methods=["mocov2plus"]), victim, "cifar10", profile="paper")
    assert paper[0].spec.params == {"epochs": 3}  # SGD partner of a LARS victim: its own lr
    assert paper[1].spec.params == {"epochs": 3, "lr": 1e-3}  # the SimCLR BMP encoder: same optimiser
    pinned = victim.model_copy(update={"params": {"lr": 0.05, "optimizer": "sgd"}})
    both = ZePAD.auxiliary_encoders(ZePAD.Params(aux_methods=["mocov2plus"]), pinned, "cifar10", profile="paper")
    assert [a.spec.params for a in both] == [{"lr": 0.05, "optimizer": "sgd"}] * 2


def test_the_tiny_profile_trains_every_method_with_adam_at_1e_3_for_batch_64():
    from daebench.encoders.ssl import SSL_METHODS

    for name in SSL_METHODS.names():
        params = SSL_METHODS.get(name).resolve_params("tiny")
        assert params.optimizer == "adam", name
        assert params.lr * params.batch_size / 256 == pytest.approx(1e-3), name

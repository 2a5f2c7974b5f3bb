import pytest
import torch

from daebench.heads import HeadParams, make_head, train_head
from daebench.metrics import robustness_metrics, wilson_interval


def test_metrics_are_sample_weighted():
    y = torch.tensor([0, 1, 2, 3, 4])
    clean = torch.tensor([0, 1, 2, 3, 0])
    adv = torch.tensor([0, 0, 0, 3, 0])
    m = robustness_metrics(y, clean, adv)
    assert m["n"] == 5
    assert m["BA"] == 0.8 and m["RA"] == 0.4 and m["ASR"] == 0.4
    for k in ("BA", "RA", "ASR"):
        assert m[f"{k}_lo"] <= m[k] <= m[f"{k}_hi"]


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3
    assert wilson_interval(0, 10)[0] == 0.0


def test_head_architecture_matches_the_reference():
    head = make_head(64, 7)  # NonLinearClassifier(feat_dim): hidden width = the feature dimension
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(64, 64), (64, 64), (64, 7)]
    wide = [m for m in make_head(64, 7, HeadParams(hidden=512)) if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in wide] == [(64, 512), (512, 512), (512, 7)]
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in head)


def test_head_training_is_deterministic_and_learns():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 64, generator=g)
    y = (x[:, 0] > 0).long()
    p = HeadParams(epochs=20)  # the reference's epochs; hidden width = the 64-d features'
    a, b = train_head(x, y, 2, p, seed=3), train_head(x, y, 2, p, seed=3)
    for ta, tb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(ta, tb)
    assert (a(x).argmax(1) == y).float().mean() > 0.9


def test_batch_mean_accuracy_is_the_reference_mean_of_per_batch_accuracies():
    from daebench.metrics import batch_mean_accuracy

    hits = torch.tensor([True] * 256 + [False] * 4)  # a full batch all right, a short one all wrong
    assert batch_mean_accuracy(hits) == pytest.approx(0.5)  # the reference's figure
    assert float(hits.float().mean()) == pytest.approx(256 / 260)  # every sample once
    labels = torch.arange(10)
    m = robustness_metrics(labels, labels, labels.flip(0))
    assert m["BA_batch_mean"] == 1.0 and m["RA_batch_mean"] == pytest.approx(m["RA"])


def test_paired_difference_is_mcnemar_on_the_disagreements():
    from daebench.metrics import paired_accuracy_difference

    # 100 images: both right on 60, A alone on 10, B alone on 2, both wrong on 28
    a = torch.tensor([1] * 60 + [1] * 10 + [0] * 2 + [0] * 28)
    b = torch.tensor([1] * 60 + [0] * 10 + [1] * 2 + [0] * 28)
    out = paired_accuracy_difference(a, b)
    assert (out["n"], out["a_only"], out["b_only"]) == (100, 10, 2)
    assert out["difference"] == pytest.approx(0.08)
    # exact McNemar by hand: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert out["p_value"] == pytest.approx(2 * 79 / 4096)
    se = (12 - 8 ** 2 / 100) ** 0.5 / 100
    assert out["difference_lo"] == pytest.approx(0.08 - 1.959964 * se, abs=1e-6)
    # the pairing matters: the same two accuracies with the disagreements balanced
    same = paired_accuracy_difference(torch.tensor([1, 0] * 50), torch.tensor([1, 0] * 50))
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["a_only"] == 0
    with pytest.raises(ValueError, match="same images"):
        paired_accuracy_difference(a, b[:-1])

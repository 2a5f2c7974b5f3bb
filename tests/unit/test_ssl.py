import pytest
import torch

from benchmark.encoders import build_encoder
from benchmark.encoders.knn import knn_accuracy
from benchmark.encoders.ssl import SSL_METHODS, pretrain
from benchmark.encoders.ssl.augment import AugmentParams, augment


def test_augment_is_per_sample_valid_and_seeded():
    x = torch.rand(16, 3, 32, 32)
    a = augment(x, AugmentParams(), torch.Generator().manual_seed(0))
    b = augment(x, AugmentParams(), torch.Generator().manual_seed(0))
    c = augment(x, AugmentParams(), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = augment(x[:1].expand(8, -1, -1, -1).contiguous(), AugmentParams(), torch.Generator().manual_seed(0))
    assert not torch.allclose(same[0], same[1])  # each image gets its own random parameters


def test_identity_augmentation_is_near_identity():
    x = torch.rand(4, 3, 32, 32)
    p = AugmentParams(crop_min_scale=1.0, jitter_prob=0.0, grayscale_prob=0.0, flip_prob=0.0)
    y = augment(x, p, torch.Generator().manual_seed(0))
    # A full-size crop has aspect ratio jitter only; the centre of the image is preserved closely.
    assert (y - x).abs().mean() < 0.25


def test_knn_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(10, 8, generator=g)
    ytr, yte = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (10,), generator=g)
    k, t = 5, 0.07
    correct = 0
    for i in range(10):
        sims = torch.nn.functional.cosine_similarity(test[i:i + 1], train)
        top = sims.topk(k)
        votes = torch.zeros(3)
        for s, j in zip(top.values, top.indices):
            votes[ytr[j]] += torch.exp(s / t)
        correct += int(votes.argmax() == yte[i])
    assert knn_accuracy(train, ytr, test, yte, k=k, temperature=t) == pytest.approx(correct / 10)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretrain_runs_changes_weights_and_is_deterministic(method):
    x = (torch.rand(64, 3, 16, 16) * 255).to(torch.uint8)
    params = SSL_METHODS.get(method).resolve_params("tiny", {"epochs": 2, "batch_size": 32})

    def run():
        torch.manual_seed(0)
        enc = build_encoder("resnet18", width=4)
        before = {k: v.clone() for k, v in enc.state_dict().items()}
        log = pretrain(method, params, enc, x, seed=0, device=torch.device("cpu"))
        return enc, before, log

    enc, before, log = run()
    enc2, _, log2 = run()
    assert len(log["loss_history"]) == 2 and all(torch.isfinite(torch.tensor(log["loss_history"])))
    assert any(not torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert log["loss_history"] == log2["loss_history"]
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), enc2.state_dict().values()))


def test_paper_profiles_are_solo_learn_values():
    simclr = SSL_METHODS.get("simclr").resolve_params("paper")
    assert (simclr.epochs, simclr.optimizer, simclr.lr, simclr.temperature, simclr.proj_output_dim) == (1000, "lars", 0.4, 0.2, 256)
    byol = SSL_METHODS.get("byol").resolve_params("paper")
    assert (byol.lr, byol.base_tau, byol.final_tau, byol.proj_hidden_dim) == (1.0, 0.99, 1.0, 4096)

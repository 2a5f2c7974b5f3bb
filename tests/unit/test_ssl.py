import pytest
import torch

from daebench.encoders import build_encoder
from daebench.encoders.knn import knn_accuracy
from daebench.encoders.ssl import SSL_METHODS, pretrain
from daebench.encoders.ssl.augment import AugmentParams, augment


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


ELEVEN = ["wmse", "byol", "nnclr", "simclr", "mocov2plus", "mocov3", "supcon", "ressl", "dino", "swav", "vibcreg"]


def test_the_papers_eleven_methods_are_registered():
    assert set(ELEVEN) <= set(SSL_METHODS.names())


@pytest.mark.parametrize("method", ELEVEN)
def test_pretrain_runs_changes_weights_and_is_deterministic(method):
    g = torch.Generator().manual_seed(0)
    n = 128 if method == "wmse" else 64  # W-MSE whitens sub-batches of at least 2x its 64-d output
    x = (torch.rand(n, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 4, (n,), generator=g)
    params = SSL_METHODS.get(method).resolve_params("tiny", {"epochs": 2, "batch_size": n // 2 if n == 64 else n})

    def run():
        torch.manual_seed(0)
        enc = build_encoder("resnet18", width=4)
        before = {k: v.clone() for k, v in enc.state_dict().items()}
        log = pretrain(method, params, enc, x, seed=0, device=torch.device("cpu"), y_train=y)
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


def test_paper_profiles_of_the_other_methods_follow_solo_learn():
    def paper(m):
        return SSL_METHODS.get(m).resolve_params("paper")

    assert (paper("wmse").optimizer, paper("wmse").lr, paper("wmse").proj_output_dim, paper("wmse").whitening_size) == ("adam", 2e-3, 64, 128)
    assert (paper("nnclr").queue_size, paper("nnclr").temperature, paper("nnclr").pred_hidden_dim) == (65536, 0.2, 4096)
    assert paper("nnclr").augment2.solarize_prob == 0.2 and paper("nnclr").augment.solarize_prob == 0.0
    assert (paper("mocov2plus").optimizer, paper("mocov2plus").lr, paper("mocov2plus").queue_size,
            paper("mocov2plus").final_tau) == ("sgd", 0.3, 32768, 0.999)
    assert (paper("mocov3").lr, paper("mocov3").proj_hidden_dim, paper("mocov3").weight_decay) == (0.3, 4096, 1e-6)
    assert (paper("supcon").optimizer, paper("supcon").temperature) == ("sgd", 0.2)
    assert (paper("ressl").temperature_q, paper("ressl").temperature_k, paper("ressl").lr) == (0.1, 0.04, 0.05)
    assert paper("ressl").augment2.jitter_prob == 0.0  # the teacher's view is weak
    assert (paper("dino").num_prototypes, paper("dino").base_tau, paper("dino").warmup_teacher_temperature_epochs) == (4096, 0.9995, 0)
    assert (paper("swav").num_prototypes, paper("swav").queue_size, paper("swav").epoch_queue_starts,
            paper("swav").freeze_prototypes_epochs, paper("swav").lr) == (3000, 3840, 50, 2, 0.6)
    assert (paper("vibcreg").proj_output_dim, paper("vibcreg").cov_loss_weight, paper("vibcreg").iternorm) == (2048, 200.0, True)
    assert all(paper(m).epochs == 1000 for m in ELEVEN)


def test_supcon_needs_labels():
    x = (torch.rand(32, 3, 16, 16) * 255).to(torch.uint8)
    params = SSL_METHODS.get("supcon").resolve_params("tiny", {"epochs": 1, "batch_size": 16})
    with pytest.raises(ValueError, match="needs the training labels"):
        pretrain("supcon", params, build_encoder("resnet18", width=4), x, seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize("method", ["dino", "swav"])
def test_multi_crop_adds_small_views(method, monkeypatch):
    x = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    params = SSL_METHODS.get(method).resolve_params("tiny", {"epochs": 1, "batch_size": 16, "local_crops": 2,
                                                             "local_crop_size": 16})
    cls = SSL_METHODS.get(method)
    seen = []
    original = cls.training_loss

    def spy(self, view1, view2, local_views=()):
        seen.append([tuple(v.shape) for v in local_views])
        return original(self, view1, view2, local_views=local_views)

    monkeypatch.setattr(cls, "training_loss", spy)
    log = pretrain(method, params, build_encoder("resnet18", width=4), x, seed=0, device=torch.device("cpu"))
    assert seen and seen[0] == [(16, 3, 16, 16)] * 2
    assert all(torch.isfinite(torch.tensor(log["loss_history"])))


def test_swav_queue_fills_from_the_first_step_and_frozen_prototypes_stay_put():
    from daebench.encoders.ssl.swav import SwAV

    x = (torch.rand(64, 3, 16, 16) * 255).to(torch.uint8)
    params = SwAV.resolve_params("tiny", {"epochs": 3, "batch_size": 16, "queue_size": 32, "epoch_queue_starts": 1,
                                          "freeze_prototypes_epochs": 5, "num_prototypes": 20})
    torch.manual_seed(0)
    enc = build_encoder("resnet18", width=4)
    model = SwAV(enc, params)
    initial = model.prototypes.weight.detach().clone()  # unit rows (weight norm, g = 1)
    seen_queue = []
    original = model.criterion.forward

    def spy(high, low, queue_outputs=None):
        seen_queue.append(queue_outputs is not None)
        return original(high, low, queue_outputs=queue_outputs)

    model.criterion.forward = spy
    from daebench.encoders.ssl import base

    class Fixed:  # hand pretrain() this very instance
        def get(self, name):
            return lambda e, p: model

    real = base.SSL_METHODS
    base.SSL_METHODS = Fixed()
    try:
        pretrain("swav", params, enc, x, seed=0, device=torch.device("cpu"))
    finally:
        base.SSL_METHODS = real
    assert seen_queue == [False] * 4 + [True] * 8  # epoch 0 without the queue, from epoch 1 with it (solo-learn)
    assert model.queue.abs().sum(-1).gt(0).all()  # filled from the first step
    assert torch.allclose(model.prototypes.weight, initial)  # frozen: no update
    assert torch.allclose(initial.norm(dim=1), torch.ones(20))

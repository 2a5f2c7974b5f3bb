"""Every registered attack obeys the same contract (parametrised over the registry)."""

import pytest
import torch

from attacks import ATTACKS
from benchmark.encoders import build_encoder

EPS = 10 / 255


@pytest.fixture(scope="module")
def surrogate():
    torch.manual_seed(0)
    return build_encoder("resnet18", width=8).eval()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 3, 16, 16, generator=g)
    x[:4] = 0.0  # saturated pixels: the [0,1] clamp must hold at the borders
    x[4:8] = 1.0
    return x


@pytest.fixture(scope="module")
def labels(images):
    """The attacker's labels (attacks built on a surrogate classifier need them; the rest ignore them)."""
    return torch.randint(0, 10, (len(images),), generator=torch.Generator().manual_seed(2))


def _attack(name, seed=0):
    cls = ATTACKS.get(name)
    return cls(cls.resolve_params(cls.profile_for(None, "tiny"), {"batch_size": 16}), eps=EPS, seed=seed)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_budget_and_valid_images(name, surrogate, images, labels):
    attack = _attack(name)
    delta = attack.craft(surrogate, images, labels)
    assert delta.abs().max() <= EPS  # exactly within budget, no float slack
    assert delta.shape == ((1,) if attack.universal else (len(images),)) + images.shape[1:]
    x_adv = attack.apply(delta, images)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - images).abs().max() <= EPS + 1e-7
    assert delta.abs().max() > 0.5 * EPS  # it did something


@pytest.mark.parametrize("name", ATTACKS.names())
def test_same_seed_same_artifact(name, surrogate, images, labels):
    a = _attack(name, seed=5).craft(surrogate, images, labels)
    b = _attack(name, seed=5).craft(surrogate, images, labels)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if n != "noise"])  # noise is the control
def test_attack_moves_embeddings_more_than_random_noise(name, surrogate, images, labels):
    attack = _attack(name)
    delta = attack.craft(surrogate, images, labels)
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(images.shape, generator=g) * 2 - 1) * EPS
    with torch.no_grad():
        clean = surrogate(images)
        moved = (surrogate(attack.apply(delta, images)) - clean).pow(2).sum(1).mean()
        random = (surrogate((images + noise).clamp(0, 1)) - clean).pow(2).sum(1).mean()
    assert moved > random


def test_unclamped_apply_reproduces_reference_code():
    delta = torch.full((1, 3, 2, 2), 0.1)
    x = torch.ones(1, 3, 2, 2)
    assert ATTACKS.get("uapgd").apply(delta, x, clamp=False).max() > 1
    assert ATTACKS.get("uapgd").apply(delta, x, clamp=True).max() == 1


@pytest.mark.parametrize("name", ATTACKS.names())
def test_surrogate_is_left_as_it_was(name, surrogate, images, labels):
    before = {k: v.clone() for k, v in surrogate.state_dict().items()}
    _attack(name).craft(surrogate, images, labels)
    assert all(torch.equal(before[k], v) for k, v in surrogate.state_dict().items())
    assert all(p.requires_grad for p in surrogate.parameters())


def test_white_box_ensemble_sums_surrogate_losses(images, labels):
    """Several surrogates act as one: squared-error losses add up over the encoders."""
    from attacks.base import SurrogateEnsemble

    torch.manual_seed(1)
    a, b = build_encoder("resnet18", width=8).eval(), build_encoder("resnet18", width=8).eval()
    ensemble = SurrogateEnsemble([a, b]).eval()
    x_adv = (images + 0.01).clamp(0, 1)
    with torch.no_grad():
        joint = (ensemble(x_adv) - ensemble(images)).pow(2).sum(1)
        split = (a(x_adv) - a(images)).pow(2).sum(1) + (b(x_adv) - b(images)).pow(2).sum(1)
        assert torch.allclose(joint, split, rtol=1e-5, atol=1e-7)
        assert ensemble.forward_features(images)["layer2"].shape[1] == 2 * a.forward_features(images)["layer2"].shape[1]
    delta = _attack("pap").craft(ensemble, images, labels)
    assert delta.abs().max() <= EPS

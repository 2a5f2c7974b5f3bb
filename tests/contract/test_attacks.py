"""Every registered attack obeys the same contract (parametrised over the registry)."""

import math

import pytest
import torch

from daebench.attacks import ATTACKS
from daebench.attacks.advencoder import info_nce
from daebench.encoders import build_encoder

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
    delta = attack.craft(surrogate, images, labels).delta
    assert delta.abs().max() <= EPS  # exactly within budget, no float slack
    assert delta.shape == ((1,) if attack.universal else (len(images),)) + images.shape[1:]
    x_adv = attack.apply(delta, images)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - images).abs().max() <= EPS + 1e-7
    assert delta.abs().max() > 0.5 * EPS  # it did something


@pytest.mark.parametrize("name", ATTACKS.names())
def test_same_seed_same_artifact(name, surrogate, images, labels):
    a = _attack(name, seed=5).craft(surrogate, images, labels).delta
    b = _attack(name, seed=5).craft(surrogate, images, labels).delta
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in ATTACKS.names() if n != "noise"])  # noise is the control
def test_attack_moves_embeddings_more_than_random_noise(name, surrogate, images, labels):
    attack = _attack(name)
    delta = attack.craft(surrogate, images, labels).delta
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


@pytest.fixture(scope="module")
def two_surrogates():
    """Two different encoders (feature widths 8 and 4): a white-box attacker's surrogates."""
    torch.manual_seed(1)
    return build_encoder("resnet18", width=8).eval(), build_encoder("resnet18", width=4).eval()


@pytest.mark.parametrize("name", ATTACKS.names())
def test_white_box_attacks_never_use_the_concatenated_features(name, two_surrogates, images, labels, monkeypatch):
    """Every attack works encoder by encoder on an ensemble (its losses are summed per
    encoder), and every encoder is used."""
    from daebench.attacks.base import SurrogateEnsemble

    def refuse(*_):
        raise AssertionError("an attack used the ensemble's concatenated features")

    monkeypatch.setattr(SurrogateEnsemble, "forward", refuse)
    monkeypatch.setattr(SurrogateEnsemble, "forward_features", refuse)
    calls = [0, 0]
    first_convs = [next(m for m in e.modules() if isinstance(m, torch.nn.Conv2d)) for e in two_surrogates]
    hooks = [conv.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
             for i, conv in enumerate(first_convs)]
    try:
        delta = _attack(name).craft(SurrogateEnsemble(list(two_surrogates)), images, labels).delta
    finally:
        for h in hooks:
            h.remove()
    assert delta.abs().max() <= EPS
    assert name == "noise" or (calls[0] > 0 and calls[0] == calls[1])


def test_white_box_objectives_are_sums_of_single_encoder_objectives(two_surrogates, images, labels):
    from daebench.attacks.base import SurrogateEnsemble

    a, b = two_surrogates
    ensemble = SurrogateEnsemble([a, b]).eval()
    delta = torch.full((1, *images.shape[1:]), 0.02)
    pap = _attack("pap")
    batch = images[:8]
    joint = pap.summed(ensemble, lambda e: pap.objective(e, batch, delta))
    assert torch.allclose(joint, pap.objective(a, batch, delta) + pap.objective(b, batch, delta))
    # AdvEncoder: the InfoNCE term per encoder, the two image terms once
    adv = _attack("advencoder")
    with torch.no_grad():
        clean = [a(batch), b(batch)]
        both = adv.generator_loss(ensemble, batch, delta, clean)
        only_a = adv.generator_loss(a, batch, delta, clean[:1])
        only_b = adv.generator_loss(b, batch, delta, clean[1:])
        image_terms = only_a - adv.params.alpha * -info_nce(clean[0], a((batch + delta).clamp(0, 1)), 0.1)
    assert torch.allclose(both, only_a + only_b - image_terms, atol=1e-5)


def test_white_box_classifier_has_one_head_per_encoder_and_sums_their_logits(two_surrogates, images, labels):
    from daebench.attacks.base import SurrogateEnsemble, member_logits

    a, b = two_surrogates
    uap = _attack("uap")
    uap._labels = labels
    joint = uap.surrogate_classifier(SurrogateEnsemble([a, b]), images)
    single_a, single_b = uap.surrogate_classifier(a, images), uap.surrogate_classifier(b, images)
    with torch.no_grad():
        parts = member_logits(joint, images)
        assert torch.allclose(parts[0], single_a(images)) and torch.allclose(parts[1], single_b(images))
        assert torch.allclose(joint(images), single_a(images) + single_b(images))
        assert torch.equal(single_a(images), member_logits(single_a, images)[0])  # one surrogate: its logits


def test_white_box_crafts_are_keyed_apart_and_single_surrogate_keys_unchanged():
    from daebench.attacks.base import ENSEMBLE_VERSION
    from daebench.config import parse_grid
    from daebench.plan import plan_grid
    from tests.conftest import MICRO_GRID

    grid = parse_grid({**MICRO_GRID, "scenarios": ["semi_black_box", "white_box"], "defenses": ["zepad"]})
    crafts = [n for n in plan_grid(grid).nodes.values() if n.stage == "craft"]
    for node in crafts:
        several = len([r for r in node.inputs if r.startswith("surrogate")]) > 1
        assert node.spec.ensemble == (ENSEMBLE_VERSION if several else None)
    assert any(len(n.inputs) > 1 for n in crafts) and any(len(n.inputs) == 1 for n in crafts)


# -- options that reproduce a reference exactly ----------------------------------------------
REFERENCE_OPTIONS = {
    "advencoder": {"clamp_craft": False, "output": "last_step"},
    "pap": {"clamp_craft": False, "drop_last_real": True, "max_iterations": 2},
    "ssp": {"clamp_craft": False, "max_iterations": 2},
    "ssp_per_sample": {"start": "gaussian", "project_start": False},
    "embedattack": {"project_start": False},
    "uap": {"clamp_craft": False, "init": "random", "require_convergence": False, "pert_pad": 0.0, "augment": True},
    "uapgd": {"clamp_craft": False},
}


@pytest.mark.parametrize("name", sorted(REFERENCE_OPTIONS))
def test_reference_options_stay_out_of_the_key_at_their_defaults(name):
    cls = ATTACKS.get(name)
    options = REFERENCE_OPTIONS[name]
    default = cls.resolve_params("paper").model_dump()
    assert not set(options) & set(default)  # artifact keys of the defaults are the ones before the options
    switched = cls.resolve_params("paper", options).model_dump()
    assert all(switched[k] == v for k, v in options.items())


@pytest.mark.parametrize("name", sorted(REFERENCE_OPTIONS))
def test_reference_options_craft_within_budget_and_change_the_artifact(name, surrogate, images, labels):
    cls = ATTACKS.get(name)
    params = {"batch_size": 16, **REFERENCE_OPTIONS[name]}
    reference = cls(cls.resolve_params(cls.profile_for(None, "tiny"), params), eps=EPS, seed=0)
    delta = reference.craft(surrogate, images, labels).delta
    assert delta.abs().max() <= EPS
    assert not torch.equal(delta, _attack(name).craft(surrogate, images, labels).delta)


# -- UAPGD: the reference algorithm and the batched variant --------------------------------------
def test_uapgd_variants_differ_and_report(surrogate, images, labels):
    reference = _attack("uapgd")
    assert reference.params.variant == "reference"
    delta_ref, report = reference.craft(surrogate, images, labels)
    assert 0 <= report["fooling_rate"] <= 1 and report["images_seen"] == len(images)
    assert 0 < report["images_updated"] <= len(images)
    cls = ATTACKS.get("uapgd")
    batched = cls(cls.resolve_params("tiny", {"batch_size": 16, "variant": "batched"}), eps=EPS, seed=0)
    assert batched.params.epochs == 1 and math.isclose(batched.params.step_size, 1 / 255)  # tiny / version-3 step
    assert cls.resolve_params("paper", {"variant": "batched"}).epochs == 5  # version 3's default
    assert not torch.equal(delta_ref, batched.craft(surrogate, images, labels).delta)


@pytest.mark.parametrize("bad,match", [
    ({"loss": "embedding"}, "only for variant 'batched'"),
    ({"variant": "batched", "gamma": 0.1}, "gamma applies only to variant 'reference'"),
    ({"variant": "exact"}, "variant"),
])
def test_uapgd_rejects_inconsistent_parameters(bad, match):
    from daebench.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        ATTACKS.get("uapgd").resolve_params("paper", bad)


def test_uapgd_tiny_profile_caps_the_images():
    assert ATTACKS.get("uapgd").resolve_params("tiny").max_images == 256

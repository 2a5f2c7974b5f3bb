"""Every registered defense obeys the same contract (parametrised over the registry)."""

import pytest
import torch

from daebench.config import EncoderSpec
from daebench.encoders import build_encoder
from daebench.defenses import DEFENSES
from daebench.defenses.base import DefenseContext
from tests.conftest import digits_subset


@pytest.fixture(scope="module")
def data():
    return digits_subset(128, 64)


def _defend(name, data, seed=0, **overrides):
    torch.manual_seed(0)
    victim = build_encoder("resnet18", width=8)
    cls = DEFENSES.get(name)
    params = cls.resolve_params(cls.profile_for(None, "tiny"), ({"epochs": 1, "steps": 1, "batch_size": 64}
                                if "epochs" in cls.Params.model_fields else {}) | overrides)
    # extra encoders (ZePAD's partners and BMP encoder): fresh narrow ones stand in for pre-trained ones
    spec = EncoderSpec(method="simclr", dataset="digits", width=8)
    auxiliaries = tuple(build_encoder("resnet18", width=8) for _ in cls.auxiliary_encoders(params, spec, "digits"))
    defense = cls(params, context=DefenseContext(seed=seed, auxiliaries=auxiliaries))
    return victim, defense.defend(victim, data)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_deterministic_and_finite(name, data):
    _, a = _defend(name, data, seed=1)
    _, b = _defend(name, data, seed=1)
    x = data.x_test.float() / 255
    with torch.no_grad():
        for ea, eb in zip(a.branches, b.branches):
            fa, fb = ea.eval()(x), eb.eval()(x)
            assert torch.isfinite(fa).all()
            assert torch.equal(fa, fb)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_victim_is_not_modified(name, data):
    victim, model = _defend(name, data)
    fresh = build_encoder("resnet18", width=8)
    torch.manual_seed(0)
    fresh = build_encoder("resnet18", width=8)
    for (k, v), (_, w) in zip(victim.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), k


FAST = [n for n in DEFENSES.names() if "amp" in DEFENSES.get(n).Params.model_fields]


def test_every_trained_defense_has_the_speed_switches():
    assert set(FAST) >= {"pgd_at", "trades", "mart", "deacl", "genaf", "zepad"}


@pytest.mark.parametrize("name", FAST)
def test_speed_switches_enter_the_artifact_key_only_when_on(name):
    """Off (the default), the dump that keys a defense's artifact is the one from before the
    switches existed, so cached float32 artifacts stay valid; on, it records them."""
    cls = DEFENSES.get(name)
    assert not {"amp", "channels_last"} & set(cls.Params().model_dump())
    assert cls.Params(amp=True).model_dump()["amp"] is True
    assert cls.Params(channels_last=True).model_dump()["channels_last"] is True
    assert cls.Params(**cls.Params(amp=True).model_dump()).amp  # the dump round-trips


# bf16 is emulated on CPUs without AVX512-BF16 / AMX (about 10x float32): Gen-AF's three
# loops take 40 s there, so its case runs in CI's slow pass.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "genaf" else n for n in FAST])
def test_bf16_channels_last_defending_is_deterministic_and_stores_plain_weights(name, data):
    """The quick grid's speed switches: bf16 autocast really runs (the weights differ from
    the float32 run's), a seed still fixes the result, and the defended weights come back
    in the default memory format with float32 dtype, as the artifact stores them."""
    victim, a = _defend(name, data, seed=1, amp=True, channels_last=True)
    _, b = _defend(name, data, seed=1, amp=True, channels_last=True)
    _, plain = _defend(name, data, seed=1)
    x = data.x_test.float() / 255
    with torch.no_grad():
        fa, fb, fp = (m.branches[0].eval()(x) for m in (a, b, plain))
    assert torch.isfinite(fa).all() and torch.equal(fa, fb)
    assert not torch.equal(fa, fp)
    for encoder in (*a.branches, victim):  # nor is the victim converted in place
        for k, v in encoder.state_dict().items():
            assert v.is_contiguous() and (v.dtype == torch.float32 or not v.is_floating_point()), k


def test_pgd_at_changes_the_encoder(data):
    victim, model = _defend("pgd_at", data)
    assert any(not torch.equal(a, b) for a, b in zip(victim.state_dict().values(), model.branches[0].state_dict().values()))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["pgd_at", "deacl"])
def test_a_killed_defense_resumes_from_its_epoch_checkpoint_identically(name, data, tmp_path, monkeypatch):
    """Kill after the first epoch's checkpoint; a new run with the same directory resumes and
    ends with exactly the weights of an uninterrupted run."""
    from daebench.training import EpochCheckpoint

    cls = DEFENSES.get(name)
    params = cls.resolve_params(cls.profile_for(None, "tiny"), {"epochs": 3, "steps": 1, "batch_size": 64})

    def run(directory):
        torch.manual_seed(0)
        victim = build_encoder("resnet18", width=8)
        defense = cls(params, context=DefenseContext(seed=3, checkpoint_dir=directory))
        return defense.defend(victim, data).branches[0].state_dict()

    uninterrupted = run(None)
    real_save = EpochCheckpoint.save

    def save_then_die(self, state):
        real_save(self, state)
        if state["epoch"] == 1:
            raise _Killed

    monkeypatch.setattr(EpochCheckpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        run(tmp_path)
    monkeypatch.setattr(EpochCheckpoint, "save", real_save)
    assert torch.load(next(tmp_path.glob("*.pt")), weights_only=True)["epoch"] == 1
    resumed = run(tmp_path)
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key

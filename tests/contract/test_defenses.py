"""Every registered defense obeys the same contract (parametrised over the registry)."""

import pytest
import torch

from benchmark.config import EncoderSpec
from benchmark.data import load_dataset
from benchmark.encoders import build_encoder
from defenses import DEFENSES


@pytest.fixture(scope="module")
def data():
    d = load_dataset("digits", image_size=16)
    from benchmark.data import ImageData

    return ImageData("digits-small", d.x_train[:128], d.y_train[:128], d.x_test[:64], d.y_test[:64], d.num_classes)


def _defend(name, data, seed=0):
    torch.manual_seed(0)
    victim = build_encoder("resnet18", width=8)
    cls = DEFENSES.get(name)
    params = cls.resolve_params(cls.profile_for(None, "tiny"), {"epochs": 1, "steps": 1, "batch_size": 64}
                                if "epochs" in cls.Params.model_fields else {})
    defense = cls(params, seed=seed)
    # extra encoders (ZePAD's partners and BMP encoder): fresh narrow ones stand in for pre-trained ones
    spec = EncoderSpec(method="simclr", dataset="digits", width=8)
    defense.auxiliaries = [build_encoder("resnet18", width=8) for _ in cls.auxiliary_encoders(params, spec, "digits")]
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


def test_pgd_at_changes_the_encoder(data):
    victim, model = _defend("pgd_at", data)
    assert any(not torch.equal(a, b) for a, b in zip(victim.state_dict().values(), model.branches[0].state_dict().values()))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("name", ["pgd_at", "deacl"])
def test_a_killed_defense_resumes_from_its_epoch_checkpoint_identically(name, data, tmp_path, monkeypatch):
    """Kill after the first epoch's checkpoint; a new run with the same directory resumes and
    ends with exactly the weights of an uninterrupted run."""
    from defenses.base import EpochCheckpoint

    cls = DEFENSES.get(name)
    params = cls.resolve_params(cls.profile_for(None, "tiny"), {"epochs": 3, "steps": 1, "batch_size": 64})

    def run(directory):
        torch.manual_seed(0)
        victim = build_encoder("resnet18", width=8)
        defense = cls(params, seed=3)
        defense.checkpoint_dir = directory
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

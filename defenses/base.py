"""The `Defense` base: turn the public victim encoder into a defended model.

A defense sees the victim encoder and the defender's fine-tuning data D_f (never
the downstream data D_d, never the attack): one defended model must serve every
attack and every downstream task (the paper's persistent-robustness setting).

A defended model is a list of *branches* (encoders); downstream, one head is
trained per branch on its frozen features and the heads' logits are fused by
`Defense.fuse` (a single branch: identity). ZePAD's three branches and RFDM
fusion fit the same shape.

`AdversarialFineTuning` is the base of PGD-AT / TRADES / MART / Gen-AF / ZePAD's
MPAE branches: it owns the loop (encoder Adam + D_f head Adam, the released Gen-AF /
ZePAD schedule, so comparisons are fair), the seeding, the PGD and the epoch
selection; a subclass writes `loss`. How each piece maps onto the reference code,
and which options reproduce it where the default differs: docs/FIDELITY.md
(#adversarial-fine-tuning-loop).

`amp` / `channels_last` (off by default) run the encoder's forwards under bf16
autocast with channels-last memory, about 2x faster on CPU; heads and losses stay in
float32 (`fast_encoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from daebench.data import ImageData, to_float
from daebench.encoders.backbones import Encoder
from daebench.encoders.models import FastEncoder
from daebench.heads import HeadParams, head_optimizer, make_head
from daebench.plugins import Configurable, Params, Work, capped, required
from daebench.registry import Registry
from daebench.runtime import batches, seed_everything
from daebench.training import EpochCheckpoint, PGDResult, pgd, restore_rng, rng_state

DEFENSES: Registry = Registry(
    "defense", entry_point_group="daebench.defenses",
    builtin_package="daebench.defenses",  # every module in defenses/ is a plugin file
)
register_defense = DEFENSES.register


class SpeedSwitches(Params):
    """How the encoder's forwards run while defending; in the artifact key when on (bf16
    changes the numbers), left out of it when off (float32 artifacts keep their keys)."""

    omitted_when: ClassVar[dict[str, Any]] = {"amp": False, "channels_last": False}
    amp: bool = Field(False, description="bf16 autocast for the encoder's forwards (CPU and CUDA); heads and losses in float32")
    channels_last: bool = Field(False, description="channels-last memory format for the encoder while defending")


@dataclass(frozen=True)
class AuxiliaryEncoder:
    """An encoder a defense needs besides the victim: an `EncoderSpec`; `public` ones are
    also the white-box attacker's surrogates; `seed_offset` makes the defender's own
    pre-training a run of its own even when its recipe equals the victim's."""

    spec: Any
    public: bool = True
    seed_offset: int = 0


@dataclass
class DefendedModel:
    """What a defense produces: one or more branches, each any module mapping [0, 1] images
    to features (`daebench.encoders.models`: an encoder, an input transformation in front
    of one, a plugin's own kind), how their heads' logits combine (`fusion`, for several
    branches), and diagnostics to record with the artifact (`info`)."""

    branches: list[nn.Module]
    info: dict[str, Any] = field(default_factory=dict)
    fusion: "Fusion | None" = None


class Fusion(BaseModel):
    """How a multi-branch defended model combines its branches downstream, recorded with it:
    the fusion rule, which branches form the adversarially tuned (MPAE) side and which one
    is the benign (BMP) branch, and the detector's threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str = "rfdm"
    mpae: list[int] = Field(default_factory=list)
    bmp: int | None = None
    threshold: float = 0.0

    @classmethod
    def recorded(cls, meta: dict[str, Any]) -> "Fusion | None":
        """The fusion an artifact's metadata records (older defended models kept it under `info`)."""
        raw = meta.get("fusion") or meta.get("info", {}).get("fusion")
        return cls(**raw) if raw else None


class FineTuneSplit(NamedTuple):
    """D_f's training split as a defense uses it: the images it trains on and, when it
    selects a model on held-out data, the validation part it never trains on."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def unnormalised(encoder: nn.Module) -> nn.Module:
    """The encoder without its input normalisation (the same parameters): the released
    Gen-AF / ZePAD loops attack and probe `Sequential(encoder, head)` on raw [0, 1]
    images although they train it on normalised ones, and their `released` variant
    reproduces that. Works on an `Encoder` and on a `FastEncoder` around one."""
    if isinstance(encoder, FastEncoder):
        return FastEncoder(unnormalised(encoder.encoder), encoder.amp, encoder.channels_last)
    if isinstance(encoder, Encoder):
        return encoder.backbone
    raise TypeError(f"unnormalised() needs an Encoder (or a FastEncoder around one), got {type(encoder).__name__}")


@dataclass(frozen=True)
class DefenseContext:
    """What a defense gets besides its parameters: its seed and device, the auxiliary
    encoders it declared (`auxiliary_encoders`, in that order), the extra datasets it
    named (`extra_datasets`) and where to keep epoch checkpoints (None: nowhere)."""

    seed: int = 0
    device: torch.device = torch.device("cpu")
    progress: bool = False
    auxiliaries: tuple[nn.Module, ...] = ()
    extra_data: dict[str, ImageData] = field(default_factory=dict)
    checkpoint_dir: Path | None = None


class Defense(Configurable):
    """Subclass: implement `defend` (or derive from AdversarialFineTuning and write `loss`)."""

    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: Params, seed: int = 0, device: torch.device | str = "cpu", progress: bool = False,
                 context: DefenseContext | None = None) -> None:
        self.params = params
        self.context = context or DefenseContext(seed, torch.device(device), progress)

    @property
    def seed(self) -> int:
        return self.context.seed

    @property
    def device(self) -> torch.device:
        return torch.device(self.context.device)

    @property
    def progress(self) -> bool:
        return self.context.progress

    @property
    def auxiliaries(self) -> tuple[nn.Module, ...]:
        return self.context.auxiliaries

    @property
    def extra_data(self) -> dict[str, ImageData]:
        return self.context.extra_data

    def checkpoint(self, name: str) -> EpochCheckpoint:
        directory = self.context.checkpoint_dir
        return EpochCheckpoint(directory / f"{name}.pt" if directory else None)

    def fast_encoder(self, encoder: Encoder) -> nn.Module:
        """`encoder` as the params' speed switches (`SpeedSwitches`) ask to run it: itself
        when both are off; else converted in place to channels-last memory (if asked) and
        wrapped in a `FastEncoder`. `plain_encoder` undoes the memory format."""
        amp, channels_last = getattr(self.params, "amp", False), getattr(self.params, "channels_last", False)
        if not (amp or channels_last):
            return encoder
        if channels_last:
            encoder.to(memory_format=torch.channels_last)
        return FastEncoder(encoder, amp, channels_last)

    @staticmethod
    def plain_encoder(encoder: Encoder) -> Encoder:
        """Back to the default (contiguous) memory format, as the artifact stores it."""
        return encoder.to(memory_format=torch.contiguous_format)

    @required
    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        raise NotImplementedError

    @classmethod
    def auxiliary_encoders(cls, params: Params, victim: Any, fine_tune_data: str,
                           profile: str = "paper", datasets: Collection[str] = ()) -> list["AuxiliaryEncoder"]:
        """Extra encoders the defense builds on, e.g. ZePAD's MPAE partner (public) and
        its BMP encoder. The grid pre-trains or loads them and hands them to `defend`, in
        this order, as `self.auxiliaries`; white-box attackers get the public ones as
        surrogates too. `profile` is the grid's default profile, which an auxiliary
        without its own inherits; `datasets` the dataset names the grid can load."""
        return []

    @classmethod
    def extra_datasets(cls, params: Params) -> list[str]:
        """Datasets the defense reads besides D_f (e.g. Gen-AF's released STL10 probe set);
        the grid loads them and hands them to `defend` as `self.extra_data[name]`."""
        return []

    @staticmethod
    def detection_score(confidences: list[torch.Tensor], fusion: Fusion | None = None) -> torch.Tensor | None:
        """A per-input score, higher = more likely adversarial, from per-branch confidences
        (max softmax), or None when the defense has no detector. The evaluation reports
        its AUROC over the clean and adversarial test images, whatever the threshold."""
        return None

    @classmethod
    def detect(cls, confidences: list[torch.Tensor], fusion: Fusion | None = None) -> torch.Tensor | None:
        """Flag inputs as adversarial: `detection_score` above the threshold the defended
        model recorded (`fusion.threshold`). The evaluation reports the detection
        accuracy over the clean (should pass) and adversarial (should be flagged) images."""
        score = cls.detection_score(confidences, fusion)
        return None if score is None else score > (fusion.threshold if fusion else 0.0)

    @staticmethod
    def fuse(logits: list[torch.Tensor], fusion: Fusion | None = None) -> torch.Tensor:
        """Combine per-branch logits into one prediction; one branch: itself. `fusion` is
        what the defended model recorded (e.g. which branch is which)."""
        if len(logits) != 1:
            raise NotImplementedError("multi-branch defenses must define fuse()")
        return logits[0]


class AdversarialFineTuningParams(SpeedSwitches):
    # Options added after artifacts were cached, left out of keys at the value that computes
    # what was computed before them.
    omitted_when: ClassVar[dict[str, Any]] = {"selection": "last", "validation_fraction": 0.1,
                                              "selection_eps": 8 / 255, "attack_mode": "eval"}
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    encoder_lr: float = Field(1e-4, gt=0)
    head_lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(8e-4, ge=0)
    lr_decay: float = Field(0.96, gt=0, le=1)
    eps: float = Field(8 / 255, gt=0, le=1)
    step_size: float = Field(2 / 255, gt=0)
    steps: int = Field(10, ge=0)
    random_start: bool = True
    attack_mode: Literal["eval", "train"] = Field(
        "eval", description="BatchNorm during the training attack: running statistics, untouched (eval), or batch "
                            "statistics with running-statistics updates (train, as Madry's PGD-AT code)")
    max_samples: int | None = Field(None, ge=1, description="use only the first N of D_f (CPU profiles)")
    selection: Literal["last", "validation", "test"] = Field(
        "last", description="which epoch's weights the defense keeps: the last; the one with the best FGSM robust "
                            "accuracy on a held-out validation part of D_f's training split; or `test`, the "
                            "released ZePAD loop's TEST-SET SELECTION on D_f's test split (the evaluation test set "
                            "whenever D_f = D_d: never a default)")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="share of D_f's training split held out for "
                                                                     "validation-based selection (never trained on)")
    selection_eps: float = Field(8 / 255, gt=0, le=1, description="FGSM budget of the selection metric (the released ZePAD loop's)")


def stage_one_selection(p: AdversarialFineTuningParams, images: int) -> Work:
    """The epoch-selection check's passes: an FGSM and a forward over the held-out part, every epoch."""
    if p.selection == "last":
        return Work()
    held_out = capped(p, images) * p.validation_fraction if p.selection == "validation" else capped(p, images) * 0.2
    return Work(train=held_out * p.epochs, forward=held_out * p.epochs)


class AdversarialFineTuning(Defense):
    """Fine-tune encoder + a D_f head on an adversarial objective; keep the encoder."""

    Params: ClassVar[type[AdversarialFineTuningParams]] = AdversarialFineTuningParams

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Per image and epoch: the PGD's `steps` forward + backward passes, then the
        training step's adversarial and clean ones; plus the per-epoch selection check
        (an FGSM on the validation part)."""
        p = cls.Params.model_validate(params)
        seen = capped(p, images) * p.epochs
        return Work(train=seen * (p.steps + 2)) + stage_one_selection(p, images)

    @required
    def loss(self, encoder: Encoder, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pgd(self, objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float | None = None,
            step_size: float | None = None, steps: int | None = None, random_start: bool | None = None,
            **options: Any) -> PGDResult:
        """`daebench.training.pgd` at this defense's attack settings (each overridable);
        `options` are that function's (start, clamp_start, iterates, leak_into)."""
        p = self.params
        return pgd(objective, x, p.eps if eps is None else eps, p.step_size if step_size is None else step_size,
                   p.steps if steps is None else steps, p.random_start if random_start is None else random_start,
                   **options)

    def ce_adversarial_examples(self, encoder: Encoder, head: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                start: torch.Tensor | None = None, iterates: list[torch.Tensor] | None = None,
                                leak: bool = False) -> PGDResult:
        """PGD on the head's cross-entropy with BatchNorm in eval mode (the attack must not
        update running statistics), or with `attack_mode: train` the encoder in train mode
        (batch statistics, running statistics updated by every attack forward, as Madry's
        TF model with `updates_collections=None`); leaves encoder and head in train mode for
        the step. `leak`: the released Gen-AF loop's bug, on purpose (`training.pgd`'s `leak_into`)."""
        encoder.train(self.params.attack_mode == "train")
        head.eval()
        leak_into = [*encoder.parameters(), *head.parameters()] if leak else None
        attack = self.pgd(lambda z: F.cross_entropy(head(encoder(z)), y), x, start=start, iterates=iterates,
                          leak_into=leak_into)
        encoder.train()
        head.train()
        return attack

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        encoder, _, info = self.fine_tune(victim, data)
        return DefendedModel([encoder.eval()], info)

    # -- D_f, held-out validation and epoch selection ----------------------------------------
    def needs_validation(self) -> bool:
        """Whether any model selection of this defense runs on held-out validation data."""
        return self.params.selection == "validation"

    def fine_tune_split(self, data: ImageData) -> FineTuneSplit:
        """D_f's training images (the first `max_samples` of them), minus a seeded random
        `validation_fraction` held out when the defense selects on validation data."""
        p = self.params
        x, y = data.x_train, data.y_train
        if p.max_samples:
            x, y = x[: p.max_samples], y[: p.max_samples]
        if not self.needs_validation():
            return FineTuneSplit(x, y)
        n_val = max(1, round(p.validation_fraction * len(x)))
        if n_val >= len(x):
            raise ValueError(f"{self.registry_name}: validation_fraction {p.validation_fraction} of {len(x)} D_f training "
                             f"images leaves nothing to train on; lower it or use more images")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + 7919))
        train, val = order[n_val:].sort().values, order[:n_val].sort().values
        return FineTuneSplit(x[train], y[train], x[val], y[val])

    def selection_data(self, split: FineTuneSplit, data: ImageData, selection: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The images a selection rule scores on: None for `last`."""
        if selection == "validation":
            return split.x_val, split.y_val
        if selection == "test":
            return data.x_test, data.y_test
        return None

    def selection_score(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        """FGSM robust accuracy of encoder + head (eval mode), the released ZePAD loop's
        epoch-selection metric; a subclass may craft it as its reference does."""
        return fgsm_accuracy(nn.Sequential(encoder, head), nn.Sequential(encoder, head), x, y,
                             self.params.selection_eps, self.device)

    def fine_tune(self, victim: Encoder, data: ImageData, tag: str = "fine_tune",
                  split: FineTuneSplit | None = None) -> tuple[Encoder, nn.Module, dict[str, Any]]:
        """The shared loop: a copy of the victim and a fresh D_f head trained on `loss`.
        Returns (encoder, head, info: per-epoch mean loss and the selection record); the
        victim is never modified. It checkpoints every epoch under `tag` and resumes
        from a checkpoint it finds."""
        p = self.params
        split = split or self.fine_tune_split(data)
        generator = seed_everything(self.seed)
        encoder = _clone(victim).to(self.device)
        fast = self.fast_encoder(encoder)
        head = make_head(encoder.feature_dim, data.num_classes).to(self.device)
        enc_opt = torch.optim.Adam(encoder.parameters(), lr=p.encoder_lr, weight_decay=p.weight_decay)
        enc_sched = torch.optim.lr_scheduler.ExponentialLR(enc_opt, gamma=p.lr_decay)
        head_opt, head_sched = head_optimizer(head, HeadParams(lr=p.head_lr, weight_decay=p.weight_decay, lr_decay=p.lr_decay))
        x_all, y_all = split.x_train.to(self.device), split.y_train.to(self.device)  # to the device once
        scored_on = self.selection_data(split, data, p.selection)
        history: list[float] = []
        scores: list[float] = []
        best: dict[str, Any] | None = None  # {"epoch", "score", "encoder", "head"} of the kept epoch
        checkpoint, first_epoch = self.checkpoint(tag), 0
        parts = {"encoder": encoder, "head": head, "enc_opt": enc_opt, "head_opt": head_opt,
                 "enc_sched": enc_sched, "head_sched": head_sched}
        if (state := checkpoint.load()) is not None:
            for name, part in parts.items():
                part.load_state_dict(state[name])
            restore_rng(state, generator)
            history, first_epoch = list(state["history"]), int(state["epoch"]) + 1
            scores, best = list(state.get("scores", [])), state.get("best")
        for epoch in tqdm(range(first_epoch, p.epochs), desc=f"defend:{self.registry_name}", leave=False,
                          disable=not self.progress):
            total = torch.zeros((), device=self.device)  # on the device: no host sync per step
            count = 0
            for idx in batches(len(x_all), p.batch_size, generator):
                idx = idx.to(self.device)
                x, y = to_float(x_all[idx]), y_all[idx]
                encoder.train()
                head.train()
                # zeroed before `loss`: an attack that leaks on purpose (`pgd(leak_into=...)`)
                # adds its gradients to this step, as the released Gen-AF loop does
                enc_opt.zero_grad(set_to_none=True)
                head_opt.zero_grad(set_to_none=True)
                loss = self.loss(fast, head, x, y)
                loss.backward()
                enc_opt.step()
                head_opt.step()
                total = total + loss.detach().float() * len(idx)
                count += len(idx)
            enc_sched.step()
            head_sched.step()
            history.append(float(total) / max(count, 1))
            if scored_on is not None:
                scores.append(self.selection_score(fast, head, *scored_on))
                if best is None or scores[-1] > best["score"]:  # the first best epoch wins ties, as `>` does in the reference
                    best = {"epoch": epoch, "score": scores[-1], "encoder": _cpu_state(encoder), "head": _cpu_state(head)}
            checkpoint.save({**{name: part.state_dict() for name, part in parts.items()}, "epoch": epoch,
                             "history": history, "scores": scores, "best": best, **rng_state(generator)})
        info: dict[str, Any] = {"train_loss": history, "selection": p.selection}
        if best is not None:
            encoder.load_state_dict(best["encoder"])
            head.load_state_dict(best["head"])
            info |= {"selected_epoch": best["epoch"] + 1, "selection_scores": scores}
        return self.plain_encoder(encoder), head, info


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 512) -> float:
    model.eval()
    images = (lambda i: to_float(x[i])) if x.dtype == torch.uint8 else (lambda i: x[i])
    correct = sum(int((model(images(i).to(device)).argmax(1).cpu() == y[i]).sum()) for i in batches(len(x), batch_size))
    return correct / max(1, len(x))


def fgsm_accuracy(attacked: nn.Module, evaluated: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  device: torch.device, batch_size: int = 256) -> float:
    """Accuracy of `evaluated` on FGSM examples crafted on `attacked` (both eval mode,
    [0, 1] uint8 or float images): x' = clamp(x + eps sign(grad CE), 0, 1), as torchattacks'
    FGSM. The two models differ only to reproduce the released loops, which craft on
    un-normalised inputs and evaluate normalised ones."""
    attacked.eval()
    evaluated.eval()
    correct = 0
    for idx in batches(len(x), batch_size):
        xb = to_float(x[idx]) if x.dtype == torch.uint8 else x[idx]
        xb, yb = xb.to(device).requires_grad_(True), y[idx].to(device)
        (grad,) = torch.autograd.grad(F.cross_entropy(attacked(xb), yb), xb)
        with torch.no_grad():
            x_adv = (xb + eps * grad.sign()).clamp(0, 1)
            correct += int((evaluated(x_adv).argmax(1) == yb).sum())
    return correct / max(1, len(x))


def _clone(encoder: Encoder) -> Encoder:
    import copy

    clone = copy.deepcopy(encoder)
    for param in clone.parameters():
        param.requires_grad_(True)
    return clone


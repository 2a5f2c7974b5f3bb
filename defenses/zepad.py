"""ZePAD (seed 001): zero-sacrifice persistent-robustness defense with RFDM fusion and DAE detection.

Branches (one downstream head each, trained on clean D_d with the encoder frozen):
the MPAE branch -- the victim and a public partner encoder of another SSL method,
each adversarially fine-tuned on D_f with Gen-AF's stage-1 loop (`defenses/genaf.py`,
its `released` variant by default, 20 epochs as ZePAD's copy of the loop) -- and the
BMP branch, an encoder trained on benign data only. RFDM fuses the branch logits,
weighting each by c = m exp(3 (m - 0.5)), m its max softmax probability; a DAE is
flagged when the MPAE branch is more confident than the BMP branch by a margin.

Sources of the auxiliary encoders (`partners`, `bmp`: any encoder spec, a method +
dataset to pre-train or a checkpoint). Unset, they take the released code's choice
where the grid has its data: the partner is BYOL pre-trained on ImageNet-100 and the
BMP encoder the public SimCLR-CIFAR10 encoder (for a SimCLR-CIFAR10 victim, the
victim itself); where the grid has no `imagenet100` (resp. `cifar10`) dataset, the
paper's description: BYOL (NNCLR for a BYOL victim) pre-trained on the victim's
D_p, and SimCLR pre-trained by the defender on its own D_f. Every step against the
released code: docs/FIDELITY.md#zepad.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Collection, Literal

import torch
from pydantic import Field, ValidationError

from daebench.data import ImageData
from daebench.encoders.backbones import Encoder
from daebench.errors import ConfigError
from daebench.plugins import Work
from daebench.defenses.base import AuxiliaryEncoder, DefendedModel, Defense, Fusion, register_defense
from daebench.defenses.genaf import GenAF, GenAFParams
from daebench.training import PGDResult

# recipe settings a partner encoder shares with the victim when the victim's spec pins
# them (sizes, speed switches), never method-specific hyper-parameters such as a
# temperature. A pinned learning rate is shared only with its optimiser: see `_shared_recipe`.
SHARED_RECIPE_KEYS = ("epochs", "batch_size", "max_samples", "amp", "channels_last")


def _shared_recipe(victim, method: str, grid_profile: str) -> dict:
    """The victim's pinned settings a partner of `method` takes over.

    A learning rate means something only for one optimiser: the victim's pinned `lr`
    goes to the partner when the victim pins `optimizer` too (both are shared), or when
    the partner's recipe, under the same profile, uses the victim's optimiser anyway
    (the tiny profile: Adam for every method). Otherwise (LARS vs SGD in the paper
    profiles) the partner keeps its own recipe's lr."""
    from daebench.encoders.ssl import SSL_METHODS

    pinned = victim.params
    shared = {k: v for k, v in pinned.items() if k in SHARED_RECIPE_KEYS}
    if "optimizer" in pinned:
        shared["optimizer"] = pinned["optimizer"]
        if "lr" in pinned:
            shared["lr"] = pinned["lr"]
    elif "lr" in pinned and victim.method in SSL_METHODS and method in SSL_METHODS:
        def optimiser(name: str) -> str:
            cls = SSL_METHODS.get(name)
            return cls.resolve_params(cls.profile_for(victim.profile, grid_profile)).optimizer

        if optimiser(victim.method) == optimiser(method):
            shared["lr"] = pinned["lr"]
    return shared


#: The released code's auxiliary encoders and the dataset each was pre-trained on.
RELEASED_PARTNER = ("byol", "imagenet100")
RELEASED_BMP = ("simclr", "cifar10")


class ZePADParams(GenAFParams):
    epochs: int = Field(20, ge=1, description="stage-1 epochs per MPAE encoder (ZePAD's copy of the loop: 20)")
    stage2: bool = Field(False, description="ZePAD uses Gen-AF's stage-1 loop only")
    selection: Literal["last", "validation", "test"] = Field(
        "validation", description="MPAE epoch kept: best FGSM robust accuracy on a held-out validation part of D_f's "
                                  "training split; `test`: the released loop's TEST-SET SELECTION on D_f's test split; "
                                  "`last`")
    aux_methods: list[str] | None = Field(None, description="SSL methods of the MPAE partners when they are pre-trained "
                                                            "on the victim's D_p (default: byol, nnclr for a BYOL victim)")
    partners: list[dict[str, Any]] | None = Field(
        None, description="encoder specs of the MPAE partners (method + dataset, or checkpoint + arch); unset: the "
                          "released BYOL-ImageNet-100 where the grid has `imagenet100`, else `aux_methods` on the "
                          "victim's D_p")
    bmp: dict[str, Any] | None = Field(
        None, description="encoder spec of the BMP encoder; unset: the released public SimCLR-CIFAR10 where the grid "
                          "has `cifar10`, else `bmp_method` pre-trained by the defender on D_f")
    bmp_method: str = Field("simclr", description="SSL method of the defender's own BMP encoder (the fallback)")
    fusion: Literal["rfdm", "equal", "entropy", "inverse_entropy"] = Field(
        "rfdm", description="rfdm (Eq. 7-8); equal (mean logits); entropy: weights proportional to each branch's "
                            "prediction entropy, as the released confidence.py (Table S3); inverse_entropy: 1/entropy")
    adv_source: Literal["pgd", "generator"] = Field(
        "pgd", description="D_adv by PGD (the released code) or by a generator G, x* = x + G (the paper's Algorithm 1)")
    generator_params: dict = Field(default_factory=dict,
                                   description="AdvEncoder parameters of G (adv_source: generator); default the reference's")
    detect_threshold: float = Field(0.1, ge=0, le=1, description="flag a DAE when MPAE confidence - BMP confidence "
                                                                 "exceeds it (the paper's 0.1)")
    adversarial_fine_tuning: bool = True
    mpae_branch: bool = True
    bmp_branch: bool = True


@register_defense("zepad")
class ZePAD(Defense):
    """ZePAD: adversarially fine-tuned multi-encoder branch + benign branch, fused by confidence (RFDM)."""

    Params = ZePADParams
    version = 3  # 3: Gen-AF version 3's stage 1, released auxiliary sources, entropy as released, validation selection
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014,
                         "generator_params": {"widths": (64, 32, 16, 8), "epochs": 2}}}

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Gen-AF's stage 1 on each MPAE encoder (the victim and its partners); the
        partners' and the BMP encoder's pre-training are stages of their own."""
        p = cls.Params.model_validate(params)
        if not p.adversarial_fine_tuning:
            return Work()
        stage_one = GenAFParams(**{k: v for k, v in dict(p).items() if k in GenAFParams.model_fields})
        encoders = 1 + (cls.partner_count(p) if p.mpae_branch else 0)
        return GenAF.work(dict(stage_one), images) * encoders

    @classmethod
    def partner_methods(cls, params: ZePADParams, victim_method: str | None) -> list[str]:
        """The paper's choice: BYOL, or NNCLR for a BYOL victim; while a method is not
        registered, the next registered one that differs from the victim's."""
        if params.aux_methods is not None:
            return list(params.aux_methods)
        from daebench.encoders.ssl import SSL_METHODS

        preference = ["byol", "nnclr", "simclr", "mocov3", "dino"]
        available = [m for m in preference if m != victim_method and m in SSL_METHODS]
        return available[:1] or ["byol"]

    @classmethod
    def partner_count(cls, params: ZePADParams) -> int:
        return len(params.partners) if params.partners is not None else len(cls.partner_methods(params, None))

    @classmethod
    def auxiliary_encoders(cls, params: ZePADParams, victim, fine_tune_data: str, profile: str = "paper",
                           datasets: Collection[str] = ()) -> list[AuxiliaryEncoder]:
        """The MPAE partners (public: white-box surrogates too), then the BMP encoder
        (never a surrogate: the paper's white-box attacker knows the MPAE branch).
        `datasets`: the names the grid can load, which decide the released choices."""

        def like_victim(method: str, dataset: str):
            return victim.model_copy(update={"name": f"{method}-{dataset}", "method": method, "dataset": dataset,
                                             "checkpoint": None, "key_map": None,
                                             "params": _shared_recipe(victim, method, profile)})

        out = []
        if params.mpae_branch:
            if params.partners is not None:
                out += [AuxiliaryEncoder(_encoder_spec(spec, victim, profile, "partners")) for spec in params.partners]
            elif RELEASED_PARTNER[1] in datasets:
                out.append(AuxiliaryEncoder(like_victim(*RELEASED_PARTNER)))
            else:  # fallback: the paper's partner on the victim's data
                d_p = victim.dataset or fine_tune_data
                out += [AuxiliaryEncoder(like_victim(m, d_p)) for m in cls.partner_methods(params, victim.method)]
        if params.bmp_branch:
            if params.bmp is not None:
                out.append(AuxiliaryEncoder(_encoder_spec(params.bmp, victim, profile, "bmp"), public=False))
            elif RELEASED_BMP[1] in datasets:
                out.append(AuxiliaryEncoder(like_victim(*RELEASED_BMP), public=False))
            else:  # fallback: the defender's own, on its clean D_f: a separate run, never public
                out.append(AuxiliaryEncoder(like_victim(params.bmp_method, fine_tune_data), public=False, seed_offset=1))
        return out

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        p = self.params
        expected = (self.partner_count(p) if p.mpae_branch else 0) + int(p.bmp_branch)
        if len(self.auxiliaries) != expected:
            raise ValueError(f"ZePAD needs {expected} auxiliary encoder(s) (MPAE partners, then the BMP encoder), "
                             f"got {len(self.auxiliaries)}; the grid supplies them from `auxiliary_encoders`")
        partners = self.auxiliaries[:-1] if p.bmp_branch else list(self.auxiliaries)
        mpae = [victim, *partners]
        info: dict = {}
        if p.adversarial_fine_tuning:
            stage_one = GenAFParams(**{k: v for k, v in dict(p).items() if k in GenAFParams.model_fields})
            tuned = []
            for i, encoder in enumerate(mpae):  # each MPAE encoder: its own run, seeded apart
                fixed = self.generator_perturbation(encoder, data, i) if p.adv_source == "generator" else None
                tuner = _GenAFStageOne(stage_one, context=dataclasses.replace(self.context, seed=self.seed + i, auxiliaries=()),
                                       fixed_perturbation=fixed)
                encoder, _, tuned_info = tuner.fine_tune(encoder, data, tag=f"mpae{i}")
                tuned.append(encoder.eval())
                info |= {f"mpae{i}_{k}": v for k, v in tuned_info.items()}
            mpae = tuned
        branches = [e.eval() for e in mpae]
        bmp = None
        if p.bmp_branch:
            bmp = len(branches)
            branches.append(self.auxiliaries[-1].eval())
        fusion = Fusion(method=p.fusion, mpae=list(range(len(mpae))), bmp=bmp, threshold=p.detect_threshold)
        return DefendedModel(branches, info, fusion)

    def generator_perturbation(self, encoder: Encoder, data: ImageData, index: int) -> torch.Tensor:
        """Algorithm 1's G: an AdvEncoder generator trained against this encoder on D_f
        (the defender plays the attacker), giving the universal perturbation x* = x + G."""
        from daebench.attacks.advencoder import AdvEncoder

        p = self.params
        attack = AdvEncoder(AdvEncoder.resolve_params(None, p.generator_params), eps=p.eps, seed=self.seed + 100 + index,
                            device=self.device)
        images = data.x_train[: p.max_samples] if p.max_samples else data.x_train
        return attack.craft(encoder, images).delta

    @staticmethod
    def fuse(logits: list[torch.Tensor], fusion: Fusion | None = None) -> torch.Tensor:
        if len(logits) == 1:
            return logits[0]
        method = fusion.method if fusion else "rfdm"
        stacked = torch.stack(logits)  # branches x batch x classes
        if method == "equal":
            return stacked.mean(0)
        if method in ("entropy", "inverse_entropy"):
            entropy = stacked.logsumexp(-1) - (stacked.softmax(-1) * stacked).sum(-1)  # as confidence.py computes it
            weights = entropy if method == "entropy" else 1 / entropy.clamp_min(1e-12)
        else:  # RFDM
            m = stacked.softmax(-1).max(-1).values
            weights = m * torch.exp(3 * (m - 0.5))
        weights = weights / weights.sum(0, keepdim=True)
        return (weights.unsqueeze(-1) * stacked).sum(0)

    @staticmethod
    def detection_score(confidences: list[torch.Tensor], fusion: Fusion | None = None) -> torch.Tensor | None:
        """MPAE confidence (the mean over its encoders' max softmax) minus the BMP branch's."""
        if fusion is None or fusion.bmp is None or not fusion.mpae:
            return None
        mpae = torch.stack([confidences[i] for i in fusion.mpae]).mean(0)
        return mpae - confidences[fusion.bmp]


def _encoder_spec(spec: dict[str, Any], victim, profile: str, where: str):
    """A user's auxiliary encoder spec as an `EncoderSpec`: the victim's architecture,
    normalisation and (for a method) shared recipe unless the spec sets them."""
    from daebench.encoders.spec import EncoderSpec

    inherited = {k: getattr(victim, k) for k in ("arch", "width", "conv1_padding", "normalization", "profile")}
    if spec.get("method") and "params" not in spec:
        inherited["params"] = _shared_recipe(victim, spec["method"], profile)
    try:
        return EncoderSpec(**{**inherited, **spec})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"zepad: invalid encoder spec in `{where}` ({spec}): {problems}. An encoder spec is "
                          f"{{method, dataset}} to pre-train or {{checkpoint, arch, width}} to load.") from None


def rfdm_weight(max_probability: float) -> float:
    """c = m exp(3 (m - 0.5)), the paper's Eq. 8 (for tests and docs)."""
    return max_probability * math.exp(3 * (max_probability - 0.5))


class _GenAFStageOne(GenAF):
    """Gen-AF's stage-1 fine-tuning of one MPAE encoder; with `fixed_perturbation`, D_adv
    is x + that perturbation (Algorithm 1's generator) instead of PGD examples."""

    registry_name = "zepad"  # progress bars and errors name the defense that runs it

    def __init__(self, params: GenAFParams, context, fixed_perturbation: torch.Tensor | None = None) -> None:
        super().__init__(params, context=context)
        self.fixed_perturbation = fixed_perturbation

    def pgd(self, objective, x, *args, **kwargs) -> PGDResult:
        if self.fixed_perturbation is None:
            return super().pgd(objective, x, *args, **kwargs)
        x_adv = (x + self.fixed_perturbation.to(x.device)).clamp(0, 1).detach()
        return PGDResult(x_adv, torch.zeros((), device=x.device))  # no attack ran, so nothing leaks

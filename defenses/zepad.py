"""ZePAD (seed 001): zero-sacrifice persistent-robustness defense with RFDM fusion and DAE detection.

Branches (one downstream head each, trained on clean D_d with the encoder frozen):
- MPAE: the victim and `aux_methods` auxiliary public encoders of other SSL methods
  (default BYOL; NNCLR when the victim is BYOL), each adversarially fine-tuned on D_f
  with Gen-AF's stage-1 loss (CE on PGD examples + lambda * GR, lambda = 20; by
  default with the released loop's leaked attack gradients, as ZePAD's own
  `adversarial_fine-tuning.py` trains: see `defenses/genaf.py`);
- BMP: an encoder the defender pre-trains itself with SimCLR on its own clean D_f
  (never released, so never a white-box surrogate).

RFDM fuses the branch logits: m_i = max softmax probability of branch i,
c_i = m_i exp(3 (m_i - 0.5)), W_i = c_i / sum_k c_k, output = sum_i W_i logits_i (the
code fuses logits). `fusion: equal` averages the logits; `fusion: entropy` weights
each branch by its inverse prediction entropy (Table S3's alternatives).

Detection (paper section 5.4, not in the released code): an input is flagged as a
DAE when the MPAE branch's confidence (the mean over its encoders) exceeds the BMP
branch's by more than `detect_threshold` (0.1); the evaluation reports the accuracy
over clean and adversarial test images (Table 6).

Table 5's switches: `adversarial_fine_tuning` (off: MPAE encoders as released),
`mpae_branch` (off: no auxiliary encoders, the victim alone on that side),
`bmp_branch` (off: no BMP encoder). All three off is the undefended victim.
`adv_source`: `pgd` (default, as the released code makes D_adv) or `generator`
(the paper's Algorithm 1: x* = x + G, with G an AdvEncoder generator the defender
trains against each MPAE encoder on D_f, with AdvEncoder's defaults or
`generator_params`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from benchmark.data import ImageData
from benchmark.encoders.backbones import Encoder
from defenses.base import AuxiliaryEncoder, DefendedModel, Defense, register_defense
from defenses.genaf import GenAF, GenAFParams

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
    from benchmark.encoders.ssl import SSL_METHODS

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


class ZePADParams(GenAFParams):
    stage2: bool = Field(False, description="ZePAD uses Gen-AF's stage-1 loss only")
    aux_methods: list[str] | None = Field(None, description="SSL methods of the MPAE partners (default: byol, nnclr for a BYOL victim)")
    bmp_method: str = Field("simclr", description="SSL method of the defender's own BMP encoder")
    fusion: Literal["rfdm", "equal", "entropy"] = "rfdm"
    adv_source: Literal["pgd", "generator"] = Field(
        "pgd", description="D_adv by PGD (the released code) or by a generator G, x* = x + G (the paper's Algorithm 1)")
    generator_params: dict = Field(default_factory=dict,
                                   description="AdvEncoder parameters of G (adv_source: generator); default the reference's")
    detect_threshold: float = Field(0.1, ge=0, le=1)
    adversarial_fine_tuning: bool = True
    mpae_branch: bool = True
    bmp_branch: bool = True


@register_defense("zepad")
class ZePAD(Defense):
    """ZePAD: adversarially fine-tuned multi-encoder branch + benign branch, fused by confidence (RFDM)."""

    Params = ZePADParams
    version = 2  # 2: Gen-AF's stage 1 at its version 2 (the leak inside the PGD)
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014,
                         "generator_params": {"widths": (64, 32, 16, 8), "epochs": 2}}}

    @classmethod
    def partner_methods(cls, params: ZePADParams, victim_method: str | None) -> list[str]:
        """The paper's choice: BYOL, or NNCLR for a BYOL victim; while a method is not
        registered, the next registered one that differs from the victim's."""
        if params.aux_methods is not None:
            return list(params.aux_methods)
        from benchmark.encoders.ssl import SSL_METHODS

        preference = ["byol", "nnclr", "simclr", "mocov3", "dino"]
        available = [m for m in preference if m != victim_method and m in SSL_METHODS]
        return available[:1] or ["byol"]

    @classmethod
    def auxiliary_encoders(cls, params: ZePADParams, victim, fine_tune_data: str,
                           profile: str = "paper") -> list[AuxiliaryEncoder]:
        def like_victim(method: str, dataset: str):
            return victim.model_copy(update={"name": f"{method}-{dataset}", "method": method, "dataset": dataset,
                                             "checkpoint": None, "key_map": None,
                                             "params": _shared_recipe(victim, method, profile)})

        out = []
        if params.mpae_branch:  # public encoders of the zoo, pre-trained on the victim's data
            d_p = victim.dataset or fine_tune_data
            out += [AuxiliaryEncoder(like_victim(m, d_p)) for m in cls.partner_methods(params, victim.method)]
        if params.bmp_branch:  # the defender's own, on its clean D_f: a separate run, never public
            out.append(AuxiliaryEncoder(like_victim(params.bmp_method, fine_tune_data), public=False, seed_offset=1))
        return out

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        p = self.params
        expected = (len(self.partner_methods(p, None)) if p.mpae_branch else 0) + int(p.bmp_branch)
        if len(self.auxiliaries) != expected:
            raise ValueError(f"ZePAD needs {expected} auxiliary encoder(s) (MPAE partners, then the BMP encoder), "
                             f"got {len(self.auxiliaries)}; the grid supplies them from `auxiliary_encoders`")
        partners = self.auxiliaries[:-1] if p.bmp_branch else list(self.auxiliaries)
        mpae = [victim, *partners]
        info: dict = {}
        if p.adversarial_fine_tuning:
            tuner = _GenAFStageOne(GenAFParams(**{k: v for k, v in p.model_dump().items() if k in GenAFParams.model_fields}),
                          seed=self.seed, device=self.device, progress=self.progress)
            tuned = []
            for i, encoder in enumerate(mpae):
                tuner.seed = self.seed + i
                tuner.checkpoint_dir = self.checkpoint_dir
                tuner.fixed_perturbation = self.generator_perturbation(encoder, data, i) if p.adv_source == "generator" else None
                encoder, _, history = tuner.fine_tune(encoder, data, tag=f"mpae{i}")
                tuned.append(encoder.eval())
                info[f"mpae{i}_train_loss"] = history
            mpae = tuned
        branches = [e.eval() for e in mpae]
        bmp = None
        if p.bmp_branch:
            bmp = len(branches)
            branches.append(self.auxiliaries[-1].eval())
        info["fusion"] = {"method": p.fusion, "mpae": list(range(len(mpae))), "bmp": bmp,
                          "threshold": p.detect_threshold}
        return DefendedModel(branches, info)

    def generator_perturbation(self, encoder: Encoder, data: ImageData, index: int) -> torch.Tensor:
        """Algorithm 1's G: an AdvEncoder generator trained against this encoder on D_f
        (the defender plays the attacker), giving the universal perturbation x* = x + G."""
        from attacks.advencoder import AdvEncoder

        p = self.params
        attack = AdvEncoder(AdvEncoder.resolve_params(None, p.generator_params), eps=p.eps, seed=self.seed + 100 + index,
                            device=self.device)
        images = data.x_train[: p.max_samples] if p.max_samples else data.x_train
        return attack.craft(encoder, images)

    @staticmethod
    def fuse(logits: list[torch.Tensor], fusion: dict | None = None) -> torch.Tensor:
        if len(logits) == 1:
            return logits[0]
        method = (fusion or {}).get("method", "rfdm")
        stacked = torch.stack(logits)  # branches x batch x classes
        probs = stacked.softmax(-1)
        if method == "equal":
            return stacked.mean(0)
        if method == "entropy":
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
            weights = 1 / entropy.clamp_min(1e-12)
        else:  # RFDM
            m = probs.max(-1).values
            weights = m * torch.exp(3 * (m - 0.5))
        weights = weights / weights.sum(0, keepdim=True)
        return (weights.unsqueeze(-1) * stacked).sum(0)

    @staticmethod
    def detect(confidences: list[torch.Tensor], fusion: dict | None = None) -> torch.Tensor | None:
        if not fusion or fusion.get("bmp") is None or not fusion.get("mpae"):
            return None
        mpae = torch.stack([confidences[i] for i in fusion["mpae"]]).mean(0)
        return mpae - confidences[fusion["bmp"]] > fusion.get("threshold", 0.1)


def rfdm_weight(max_probability: float) -> float:
    """c = m exp(3 (m - 0.5)), the paper's Eq. 8 (for tests and docs)."""
    return max_probability * math.exp(3 * (max_probability - 0.5))


class _GenAFStageOne(GenAF):
    """Gen-AF's stage-1 fine-tuning; with `fixed_perturbation`, D_adv is x + that
    perturbation (Algorithm 1's generator) instead of PGD examples."""

    fixed_perturbation: torch.Tensor | None = None

    def pgd(self, objective, x, *args, **kwargs):
        if self.fixed_perturbation is None:
            return super().pgd(objective, x, *args, **kwargs)
        self.leaked_objective = torch.zeros((), device=x.device)  # no attack ran, so nothing leaks
        return (x + self.fixed_perturbation.to(x.device)).clamp(0, 1).detach()

"""Gen-AF (Zhou et al., IEEE S&P 2024; seed 002): two-stage adversarial fine-tuning.

Stage 1, dual-track adversarial fine-tuning: encoder + a D_f head trained on
CE(f(x'), y) + lambda GR(f(x), f(x')), x' from a CE-PGD, lambda = 20, where the
genetic regularisation GR (`genetic_regularisation`) matches the neighbourhood
structure of the adversarial logits to the clean ones, shifted by label and clean
loss. Stage 2, the bilevel-optimizer collaborative strategy: score every layer by how
far moving its weight alone can raise the CE on an adversarial probe set, then
fine-tune the 20% least sensitive layers on clean D_f.

`variant` names the stage-1 loop: `released` (default: the released
`adversarial_fine-tuning.py`, un-normalised PGD whose CE leaks into the update),
`corrected` (the same objective with a leak-free PGD on normalised inputs) and
`paper` (ZePAD's Eq. 3-6: CE + lambda L_f, a label-free structure loss on encoder
features). Every step against the released code, and the options that reproduce it
where a default differs: docs/FIDELITY.md#gen-af.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from daebench.plugins import Work, capped
from daebench.data import ImageData, to_float
from daebench.encoders.backbones import Encoder
from daebench.runtime import batches
from daebench.training import pgd
from daebench.defenses.base import (AdversarialFineTuning, AdversarialFineTuningParams, DefendedModel, FineTuneSplit,
                           _accuracy, fgsm_accuracy, register_defense, unnormalised)

GR_EPS = 1e-7  # the released gr.py's eps: norm guard, distance clamp and log guard


def genetic_regularisation(logits_model: torch.Tensor, logits_target: torch.Tensor, y: torch.Tensor,
                           pair_weights: torch.Tensor, eps: float = GR_EPS) -> torch.Tensor:
    """GR as the released `utils/gr.py` computes it; the loop passes (clean, adversarial).

    Both sides: rows normalised (x / (|x| + eps)); distances d = 1 - cosine; each row's
    nearest-neighbour distance subtracted, the diagonal zeroed. The *target* side
    (the adversarial logits) is then reshaped by the pair weights
    W = tanh((w_i + w_j) / 32): d <- (1 - W) d + 2 M W, M = +1 for pairs of different
    labels and -1 otherwise. Both are clamped to [eps, 2 - eps], turned into
    similarities (2 - d) / 2 and normalised per row into P (target) and Q (model);
    GR = sum KL(P || Q) + KL(1 - P || 1 - Q), logs guarded by +eps. Nothing is detached:
    the released loop passes the clean per-sample CE as `pair_weights` with its graph,
    which adds a clean-CE-like term to the update (pass `pair_weights.detach()` for the
    option that removes it)."""
    weights = torch.tanh((pair_weights[:, None] + pair_weights[None, :]) / 32)
    sign = torch.where(y[:, None] != y[None, :], 1.0, -1.0).to(logits_model.dtype)
    d_model = _neighbour_distances(logits_model, eps).clamp(eps, 2 - eps)
    d_target = ((1 - weights) * _neighbour_distances(logits_target, eps) + 2 * sign * weights).clamp(eps, 2 - eps)
    q, p = _row_probabilities(d_model), _row_probabilities(d_target)
    return _kl(p, q, eps) + _kl(1 - p, 1 - q, eps)


def _neighbour_distances(z: torch.Tensor, eps: float) -> torch.Tensor:
    z = z / (z.norm(dim=1, keepdim=True) + eps)
    d = 1 - z @ z.T
    eye = torch.eye(len(d), dtype=torch.bool, device=d.device)
    rho = d.masked_fill(eye, float("inf")).min(dim=1, keepdim=True).values
    return (d - rho).masked_fill(eye, 0)


def _row_probabilities(d: torch.Tensor) -> torch.Tensor:
    s = (2 - d) / 2
    return s / s.sum(dim=1, keepdim=True)


def _kl(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    return (p * ((p + eps).log() - (q + eps).log())).sum()


def feature_structure_loss(features_adv: torch.Tensor, features_benign: torch.Tensor, eps: float = GR_EPS) -> torch.Tensor:
    """L_f of the ZePAD paper, Eq. 5-6, on encoder features (label-free).

    d_ij = 1 - cos(x_i, x_j) (the cosine distance); rho_j = min_{k != j} d_jk;
    s_ij = 2 - (d_ij - rho_j) for j != i; D_ij = s_ij / sum_{k != i} s_ik (Eq. 5 writes
    the sum over k != j, which would sum the i = k term; k != i keeps each row a
    distribution over the other samples). D^a from the adversarial features, D^b from
    the benign ones (the target); L_f = sum_ij D^b log(D^b / D^a) + (1 - D^b)
    log((1 - D^b) / (1 - D^a)) over i != j (Eq. 6), logs guarded by +eps."""
    d_a, d_b = _paper_pair_distribution(features_adv), _paper_pair_distribution(features_benign)
    off = ~torch.eye(len(d_a), dtype=torch.bool, device=d_a.device)
    a, b = d_a[off], d_b[off]
    return (b * ((b + eps).log() - (a + eps).log())).sum() + ((1 - b) * ((1 - b + eps).log() - (1 - a + eps).log())).sum()


def _paper_pair_distribution(features: torch.Tensor) -> torch.Tensor:
    z = F.normalize(features, dim=1)
    d = 1 - z @ z.T
    eye = torch.eye(len(d), dtype=torch.bool, device=d.device)
    rho = d.masked_fill(eye, float("inf")).min(dim=1).values  # rho_j: nearest other sample of j
    s = (2 - (d - rho[None, :])).masked_fill(eye, 0)
    return s / s.sum(dim=1, keepdim=True)


class GenAFParams(AdversarialFineTuningParams):
    epochs: int = Field(50, ge=1, description="stage-1 epochs (the released Gen-AF loop's 50)")
    eps: float = Field(0.03, gt=0, le=1)
    step_size: float = Field(0.007, gt=0)
    steps: int = Field(10, ge=0)
    random_start: bool = False
    lam: float = Field(20.0, ge=0, description="weight of the genetic-regularisation loss (lambda)")
    variant: Literal["released", "corrected", "paper"] = Field(
        "released", description="stage-1 loop: `released` (the released code: PGD on un-normalised images, its CE "
                                "at every iterate leaking into the update, GR on logits); `corrected` (leak-free PGD on "
                                "normalised images, CE + lambda GR); `paper` (ZePAD Eq. 3-6: CE + lambda L_f on encoder "
                                "features, leak-free PGD)")
    gr_detach_weights: bool = Field(False, description="detach GR's pair weights (the clean CE); the released code "
                                                       "back-propagates through them")
    stage2: bool = Field(True, description="run the bilevel stage (layer sensitivity + partial fine-tuning)")
    probe_samples: int = Field(5000, ge=1, description="adversarial probe set size (released: the 5000 STL10 training "
                                                       "images)")
    probe_data: str | None = Field(None, description="dataset of the probe set: unset, the first `probe_samples` of "
                                                     "D_f's training part; `stl10` (a dataset of the grid) reproduces the "
                                                     "released drc.py, whose STL10 labels are read as D_f classes")
    probe_eps: float = Field(8 / 255, gt=0, le=1)
    probe_step_size: float = Field(2 / 225, gt=0, description="the released drc.py's alpha, 2/225 (sic)")
    probe_steps: int = Field(10, ge=1)
    probe_random_start: bool = True
    probe_batch_size: int = Field(512, ge=1)
    probe_epochs: int = Field(10, ge=1)
    probe_lr: float = Field(1.0, gt=0)
    probe_max_change: float = Field(0.1, gt=0, description="bound on ||W - W0|| / ||W0|| while probing")
    probe_projection: Literal["epoch", "step"] = Field("epoch", description="project onto the bound after every "
                                                                            "epoch (released) or every SGD step")
    unfreeze_fraction: float = Field(0.2, gt=0, le=1, description="share of the candidate layers fine-tuned: int(f n)")
    stage2_candidates: Literal["model", "encoder"] = Field(
        "model", description="layers scored: every Conv2d / Linear of encoder + D_f head (released) or the encoder's only")
    stage2_unfreeze: Literal["substring", "exact"] = Field(
        "substring", description="released: every parameter whose name contains a chosen layer's name is unfrozen "
                                 "('0.conv1' also frees layerN.0.conv1); exact: only the chosen layers")
    stage2_mode: Literal["train", "eval"] = Field("train", description="module mode while fine-tuning (released: train, "
                                                                        "so every BatchNorm's statistics move)")
    stage2_epochs: int = Field(50, ge=1)
    stage2_lr: float = Field(1e-3, gt=0, description="Adam, re-created every epoch as released")
    stage2_selection: Literal["validation", "test", "last"] = Field(
        "validation", description="stage-2 weights kept: best clean accuracy on the held-out validation part of D_f's "
                                  "training split; `test`: the released code's TEST-SET SELECTION on D_f's test split "
                                  "(the evaluation test set whenever D_f = D_d); `last`")


@register_defense("genaf")
class GenAF(AdversarialFineTuning):
    """Gen-AF: adversarial fine-tuning with genetic regularisation, then fine-tuning of the least sensitive layers."""

    Params = GenAFParams

    @classmethod
    def work(cls, params: dict[str, Any], images: int) -> Work:
        """Stage 1 as the shared loop; stage 2: PGD on the probe set, the layer
        sensitivities (a forward + backward of the probe per epoch) and the partial
        fine-tuning epochs."""
        p = cls.Params.model_validate(params)
        work = super().work(params, images)
        if p.stage2:
            probe = min(p.probe_samples, images)
            work += Work(train=probe * (p.probe_steps + p.probe_epochs) + capped(p, images) * p.stage2_epochs)
        return work
    version = 3  # 3: the released GR, loop variants, stage 2 as released, validation selection
    profiles = {"tiny": {"epochs": 2, "steps": 3, "step_size": 0.014, "probe_samples": 128, "probe_steps": 3,
                         "probe_epochs": 2, "stage2_epochs": 2}}

    def needs_validation(self) -> bool:
        p = self.params
        return super().needs_validation() or (p.stage2 and p.stage2_selection == "validation")

    @classmethod
    def extra_datasets(cls, params: GenAFParams) -> list[str]:
        return [params.probe_data] if params.stage2 and params.probe_data else []

    def loss(self, encoder, head, x, y):
        terms = self.stage1_terms(encoder, head, x, y)
        structure = terms["gr"] if "gr" in terms else terms["lf"]
        return terms["ce"] + self.params.lam * structure + terms.get("attack_leak", 0.0)

    def stage1_terms(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stage-1 objective's terms apart (diagnostics log each): `ce` = CE(f(x'), y);
        `gr` = GR(f(x), f(x')) (`released`, `corrected`) or `lf` = L_f on features
        (`paper`); `released` adds `attack_leak`, the value of sum_k CE(f(x_k), y) over the
        PGD iterates, whose gradient the PGD already left in the parameters' `.grad`
        (the term carries none: it only makes the logged loss the trained one)."""
        p = self.params
        if p.variant == "released":
            attack = self.ce_adversarial_examples(unnormalised(encoder), head, x, y, leak=True)
            terms = {"attack_leak": attack.leaked_objective}
        else:
            attack = self.ce_adversarial_examples(encoder, head, x, y)
            terms = {}
        x_adv = attack.x_adv
        features_adv = encoder(x_adv)  # the adversarial forward first, as released (BatchNorm statistics)
        features_clean = encoder(x)
        logits_adv = head(features_adv)
        terms["ce"] = F.cross_entropy(logits_adv, y)
        if p.variant == "paper":
            terms["lf"] = feature_structure_loss(features_adv, features_clean)
        else:
            logits_clean = head(features_clean)
            clean_ce = F.cross_entropy(logits_clean, y, reduction="none")
            terms["gr"] = genetic_regularisation(logits_clean, logits_adv, y,
                                                 clean_ce.detach() if p.gr_detach_weights else clean_ce)
        return terms

    def selection_score(self, encoder, head, x, y):
        """The released loops craft the selection FGSM on un-normalised inputs."""
        if self.params.variant != "released":
            return super().selection_score(encoder, head, x, y)
        return fgsm_accuracy(nn.Sequential(unnormalised(encoder), head), nn.Sequential(encoder, head), x, y,
                             self.params.selection_eps, self.device)

    def defend(self, victim: Encoder, data: ImageData) -> DefendedModel:
        split = self.fine_tune_split(data)
        encoder, head, info = self.fine_tune(victim, data, split=split)
        if self.params.stage2:
            info |= self.stage2(encoder, head, data, split)
        return DefendedModel([encoder.eval()], info)

    # -- stage 2 -------------------------------------------------------------------------------
    def stage2(self, encoder: Encoder, head: nn.Module, data: ImageData, split: FineTuneSplit) -> dict:
        """Score the layers on an adversarial probe set, fine-tune the least sensitive ones."""
        p = self.params
        fast = self.fast_encoder(encoder)
        model = nn.Sequential(fast, head).to(self.device)
        # the released drc.py probes Sequential(encoder, head) on raw [0, 1] images
        probe_model = nn.Sequential(unnormalised(fast), head) if p.variant == "released" else model
        generator = torch.Generator().manual_seed(self.seed + 1)
        x_probe, y_probe = self.probe_set(split, data.num_classes)
        x_adv = self.probe_examples(probe_model, x_probe, y_probe)
        layers = self.candidate_layers(encoder, head)
        scores = {name: self._sensitivity(probe_model, module, x_adv, y_probe, generator) for name, module in layers.items()}
        k = max(1, int(p.unfreeze_fraction * len(layers)))
        chosen = sorted(scores, key=scores.get)[:k]  # the lowest contributions, ties in layer order (a stable sort)
        trainable = self.unfrozen_parameters(model, chosen)
        best_acc, selected_epoch = self._finetune_layers(model, trainable, data, split, generator)
        self.plain_encoder(encoder)
        return {"stage2_sensitivity": scores, "stage2_layers": chosen, "stage2_parameters": sorted(trainable),
                "stage2_selection": p.stage2_selection, "stage2_selected_epoch": selected_epoch,
                "stage2_selection_accuracy": best_acc}

    def probe_set(self, split: FineTuneSplit, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `probe_samples` images of D_f's training part, or of `probe_data`."""
        p = self.params
        x, y = split.x_train, split.y_train
        if p.probe_data:
            probe = self.extra_data.get(p.probe_data)
            if probe is None:
                raise ValueError(f"genaf: probe_data '{p.probe_data}' was not loaded; run the defense through a grid, "
                                 f"which loads the datasets `extra_datasets` names")
            if probe.num_classes > num_classes:
                raise ValueError(f"genaf: probe_data '{p.probe_data}' has {probe.num_classes} classes but the D_f head "
                                 f"has {num_classes}; its labels cannot be read as D_f classes")
            x, y = probe.x_train, probe.y_train
        return to_float(x[: p.probe_samples]).to(self.device), y[: p.probe_samples].to(self.device)

    def probe_examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """torchattacks' PGD as drc.py calls it: random start in the ball, `probe_steps`
        sign steps of `probe_step_size` on the CE, eval mode."""
        p = self.params
        model.eval()
        return torch.cat([pgd(lambda z, yb=y[idx]: F.cross_entropy(model(z), yb), x[idx], p.probe_eps,
                                  p.probe_step_size, p.probe_steps, p.probe_random_start).x_adv
                          for idx in batches(len(x), p.probe_batch_size)])

    def candidate_layers(self, encoder: Encoder, head: nn.Module) -> dict[str, nn.Module]:
        """Every Conv2d / Linear of Sequential(encoder, head), named as in the released
        code (encoder layers as torchvision's ResNet, `0.` + name; the head's three linear
        layers as its NonLinearClassifier's `1.fc1` .. `1.fc3`)."""
        layers = {f"0.{name}": m for name, m in encoder.backbone.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        if self.params.stage2_candidates == "model":
            linears = [m for m in head if isinstance(m, nn.Linear)]
            layers |= {f"1.fc{i + 1}": m for i, m in enumerate(linears)}
        return layers

    def unfrozen_parameters(self, model: nn.Sequential, chosen: list[str]) -> dict[str, nn.Parameter]:
        """The parameters stage 2 trains, by the released names (see `candidate_layers`):
        with `substring` every parameter whose name contains a chosen layer's name, as the
        released `n_key in name` test does; with `exact` the chosen layers' own."""
        named = dict(_released_parameter_names(model))
        if self.params.stage2_unfreeze == "substring":
            return {name: prm for name, prm in named.items() if any(key in name for key in chosen)}
        return {name: prm for name, prm in named.items() if name.rsplit(".", 1)[0] in chosen}

    def _sensitivity(self, model: nn.Module, module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     generator: torch.Generator) -> float:
        """How far the CE on the probe set can be raised by moving this layer's weight
        alone (SGD on -CE, ||W - W0|| <= c ||W0||): the largest epoch-end loss (from 0, as
        released) minus the original loss. Eval mode throughout; the weight is restored."""
        p = self.params
        model.eval()
        original = module.weight.detach().clone()
        frozen = [q.requires_grad for q in model.parameters()]
        for q in model.parameters():
            q.requires_grad_(False)
        module.weight.requires_grad_(True)
        opt = torch.optim.SGD([module.weight], lr=p.probe_lr)

        def project() -> None:
            with torch.no_grad():
                delta = module.weight - original
                ratio = delta.norm() / original.norm()
                if ratio > p.probe_max_change:
                    module.weight.copy_(original + delta / ratio * p.probe_max_change)

        def mean_loss() -> float:
            with torch.no_grad():
                total = sum(F.cross_entropy(model(x[i]), y[i], reduction="sum") for i in batches(len(x), p.probe_batch_size))
                return float(total) / len(x)

        base, best = mean_loss(), 0.0
        for _ in range(p.probe_epochs):
            for idx in batches(len(x), p.probe_batch_size, generator):
                opt.zero_grad(set_to_none=True)
                (-F.cross_entropy(model(x[idx]), y[idx])).backward()
                opt.step()
                if p.probe_projection == "step":
                    project()
            project()
            best = max(best, mean_loss())
        with torch.no_grad():
            module.weight.copy_(original)
        for q, r in zip(model.parameters(), frozen):
            q.requires_grad_(r)
        return best - base

    def _finetune_layers(self, model: nn.Sequential, trainable: dict[str, nn.Parameter], data: ImageData,
                         split: FineTuneSplit, generator: torch.Generator) -> tuple[float | None, int | None]:
        """Clean-CE fine-tuning of the unfrozen parameters; keeps the epoch `stage2_selection` picks."""
        p = self.params
        was = [q.requires_grad for q in model.parameters()]
        for q in model.parameters():
            q.requires_grad_(False)
        for q in trainable.values():
            q.requires_grad_(True)
        scored_on = self.selection_data(split, data, p.stage2_selection)
        best_acc, best_state, selected = None, None, None
        for epoch in range(p.stage2_epochs):
            opt = torch.optim.Adam(list(trainable.values()), lr=p.stage2_lr, weight_decay=p.weight_decay)
            model.train(p.stage2_mode == "train")
            for idx in batches(len(split.x_train), p.batch_size, generator):
                loss = F.cross_entropy(model(to_float(split.x_train[idx]).to(self.device)),
                                       split.y_train[idx].to(self.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if scored_on is not None:
                acc = _accuracy(model, *scored_on, self.device)
                if best_acc is None or acc > best_acc:
                    best_acc, best_state, selected = acc, copy.deepcopy(model.state_dict()), epoch + 1
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            selected = p.stage2_epochs
        model.eval()
        for q, r in zip(model.parameters(), was):
            q.requires_grad_(r)
        return best_acc, selected


def _released_parameter_names(model: nn.Sequential):
    """(released name, parameter) of Sequential(encoder, head): the encoder's as its
    torchvision ResNet names them, the head's linear layers as fc1 .. fc3."""
    encoder, head = model[0], model[1]
    backbone = encoder.encoder.backbone if hasattr(encoder, "encoder") else encoder.backbone
    for name, prm in backbone.named_parameters():
        yield f"0.{name}", prm
    linears = [m for m in head if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        for name, prm in layer.named_parameters():
            yield f"1.fc{i + 1}.{name}", prm

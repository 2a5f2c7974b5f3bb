"""The stage functions of a grid: each a pure function of its spec and its inputs.

    pretrain / checkpoint -> encoder (a one-branch model)
    craft(attack, surrogate encoder, attacker data)      -> perturbation
    defend(defense, victim encoder, D_f)                 -> defended model (branches)
    features(defended model, D_d split [, perturbation]) -> features per branch
    head(train features)                                 -> one head per branch
    evaluate(head, clean test features, adv features)    -> BA / RA / ASR

A stage gets its typed spec (`daebench.specs`: what to compute, how to reach the
data) and its input artifacts by role, and returns (tensors, meta). It never touches
the store or the grid: the runner does, so the same functions run under joblib
locally or on Dask workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from daebench.data import ImageData, load_dataset, to_float
from daebench.encoders.backbones import build_encoder
from daebench.defenses.base import Fusion
from daebench.encoders.models import FastEncoder, pack_branches, unpack_branches
from daebench.heads import HeadParams, make_head, predict_logits, train_head
from daebench.metrics import detection_metrics, robustness_metrics
from daebench.runtime import batches, seed_everything
from daebench.specs import (STAGE_VERSIONS, CheckpointSpec, CraftSpec, DataSpec, DefendSpec, EvaluateSpec,
                            FeaturesSpec, HeadSpec, PretrainSpec, StageSpec)
from daebench.store import Artifact

Tensors = dict[str, torch.Tensor]
StageFn = Callable[["StageContext", StageSpec, dict[str, Artifact]], tuple[Tensors, dict]]
STAGES: dict[str, StageFn] = {}
__all__ = ["STAGES", "STAGE_VERSIONS", "StageContext", "encode_images"]


@dataclass(frozen=True)
class StageContext:
    """Runtime settings that do not change what a stage computes (so not in keys)."""

    device: str = "cpu"
    data_root: str | None = None
    download: bool = True
    batch_size: int = 512
    progress: bool = False
    scratch: str | None = None  # per-stage directory for mid-stage checkpoints (removed when the artifact lands)

    @property
    def torch_device(self) -> torch.device:
        from daebench.runtime import resolve_device

        return resolve_device(self.device)

    def dataset(self, spec: DataSpec) -> ImageData:
        return load_dataset(spec.source, image_size=spec.image_size, root=self.data_root, download=self.download)


def stage(name: str) -> Callable[[StageFn], StageFn]:
    def add(fn: StageFn) -> StageFn:
        STAGES[name] = fn
        return fn

    return add


# -- encoders ------------------------------------------------------------------
@stage("pretrain")
def run_pretrain(ctx: StageContext, spec: PretrainSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    from daebench.encoders.knn import knn_accuracy
    from daebench.encoders.ssl import SSL_METHODS, pretrain

    method = SSL_METHODS.get(spec.method)
    params = method.Params(**spec.params)
    data = ctx.dataset(spec.data)
    seed_everything(spec.seed)  # the encoder's initial weights depend on it
    encoder = build_encoder(**spec.arch)
    # The quality figure's floor: the same architecture, randomly initialised (eval mode:
    # encoding touches no weights, statistics or random state).
    random_init_knn = knn_accuracy(encode_images(encoder, data.x_train, ctx.torch_device, ctx.batch_size), data.y_train,
                                   encode_images(encoder, data.x_test, ctx.torch_device, ctx.batch_size), data.y_test)
    log = pretrain(spec.method, params, encoder, data.x_train, spec.seed, ctx.torch_device, ctx.progress,
                   y_train=data.y_train)
    train_f = encode_images(encoder, data.x_train, ctx.torch_device, ctx.batch_size)
    test_f = encode_images(encoder, data.x_test, ctx.torch_device, ctx.batch_size)
    log["knn_accuracy"] = knn_accuracy(train_f, data.y_train, test_f, data.y_test)
    log["plugin"] = method.record()
    log["random_init_knn_accuracy"] = random_init_knn
    tensors, meta = pack_branches([encoder.cpu()])
    return tensors, {**meta, **log}


@stage("checkpoint")
def run_checkpoint(ctx: StageContext, spec: CheckpointSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    from daebench.encoders.checkpoints import load_encoder_weights

    encoder = build_encoder(**spec.arch)
    extras = load_encoder_weights(encoder, spec.path, key_map=spec.key_map)
    tensors, meta = pack_branches([encoder])
    # Kept, not dropped: a solo-learn `classifier.*` probe or a torchvision `fc.*` head is a
    # ready-made linear head for the pre-training dataset (`checkpoints.ready_made_head`).
    tensors.update({f"extra.{k}": v.detach().clone() for k, v in extras.items()})
    return tensors, {**meta, "source_file": Path(spec.path).name, "extra_tensors": sorted(extras)}


# -- attack ----------------------------------------------------------------------
@stage("craft")
def run_craft(ctx: StageContext, spec: CraftSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    from daebench.attacks import ATTACKS

    cls = ATTACKS.get(spec.attack)
    attack = cls(cls.Params(**spec.params), eps=spec.eps, seed=spec.seed, device=ctx.torch_device,
                 progress=ctx.progress)
    from daebench.attacks.base import SurrogateEnsemble

    # One surrogate (semi-black-box, transfer) or several (white-box: every public
    # encoder the defense uses), in the order the planner listed them.
    surrogates = [with_precision(_encoders(inputs[role])[0], spec.precision) for role in spec.inputs()]
    surrogate = surrogates[0] if len(surrogates) == 1 else SurrogateEnsemble(surrogates)
    data = ctx.dataset(spec.data)
    started = time.perf_counter()
    # Per-sample attacks never see the labels of the test images they perturb.
    x, y = data.split(cls.craft_split())
    delta, report = attack.craft(surrogate, x, y if cls.universal else None)
    return {"delta": delta}, {"universal": cls.universal, "craft_seconds": time.perf_counter() - started,
                              "linf": float(delta.abs().max()), "attack_report": report, "plugin": cls.record()}


# -- defense --------------------------------------------------------------------------
@stage("defend")
def run_defend(ctx: StageContext, spec: DefendSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    from daebench.defenses import DEFENSES

    from daebench.defenses.base import DefenseContext

    cls = DEFENSES.get(spec.defense)
    context = DefenseContext(
        seed=spec.seed, device=ctx.torch_device, progress=ctx.progress,
        auxiliaries=tuple(_encoders(inputs[role])[0] for role in spec.inputs() if role != "victim"),
        extra_data={name: ctx.dataset(data) for name, data in (spec.extra_data or {}).items()},
        checkpoint_dir=Path(ctx.scratch) if ctx.scratch else None)
    defense = cls(cls.Params(**spec.params), context=context)
    victim = _encoders(inputs["victim"])[0]
    started = time.perf_counter()
    model = defense.defend(victim, ctx.dataset(spec.data))
    tensors, meta = pack_branches([b.cpu() for b in model.branches])
    fusion = {"fusion": model.fusion.model_dump()} if model.fusion else {}
    return tensors, {**meta, **fusion, "info": model.info, "defend_seconds": time.perf_counter() - started,
                     "plugin": cls.record()}


# -- downstream --------------------------------------------------------------------------
@stage("features")
def run_features(ctx: StageContext, spec: FeaturesSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    branches = _encoders(inputs["model"])
    data = ctx.dataset(spec.data)
    x, y = data.split(spec.data.split)
    delta = inputs["perturbation"].tensors["delta"] if "perturbation" in inputs else None
    out = {"labels": y.clone()}
    for i, encoder in enumerate(branches):
        out[f"branch{i}"] = encode_images(with_precision(encoder, spec.precision), x, ctx.torch_device, ctx.batch_size, delta,
                                          True if spec.clamp is None else spec.clamp)
    meta = {"num_classes": data.num_classes, "n": len(y), "feature_dims": [e.feature_dim for e in branches]}
    fusion = Fusion.recorded(inputs["model"].meta)
    return out, meta | ({"fusion": fusion.model_dump()} if fusion else {})  # how evaluate combines the branches


@stage("head")
def run_head(ctx: StageContext, spec: HeadSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    feats = inputs["features"]
    params = HeadParams(**spec.params)
    num_classes = feats.meta["num_classes"]
    tensors: Tensors = {}
    for i, _ in enumerate(feats.meta["feature_dims"]):
        head = train_head(feats.tensors[f"branch{i}"], feats.tensors["labels"], num_classes, params,
                          spec.seed + i, ctx.torch_device)
        tensors |= {f"branch{i}.{k}": v.cpu() for k, v in head.state_dict().items()}
    return tensors, {"num_classes": num_classes, "feature_dims": feats.meta["feature_dims"]}


@stage("evaluate")
def run_evaluate(ctx: StageContext, spec: EvaluateSpec, inputs: dict[str, Artifact]) -> tuple[Tensors, dict]:
    from daebench.defenses import DEFENSES

    heads = _heads(inputs["head"], HeadParams(**spec.head_params))
    clean, adv = inputs["clean"], inputs["adv"]
    labels = clean.tensors["labels"]
    defense = DEFENSES.get(spec.defense)
    out: Tensors = {"labels": labels}
    preds, scores = {}, {}
    fusion = Fusion.recorded(clean.meta)
    for which, feats in (("clean", clean), ("adv", adv)):
        logits = [predict_logits(h, feats.tensors[f"branch{i}"]) for i, h in enumerate(heads)]
        confidences = [lg.softmax(1).max(1).values for lg in logits]
        for i, conf in enumerate(confidences):
            out[f"confidence_{which}_branch{i}"] = conf
        preds[which] = defense.fuse(logits, fusion).argmax(1)
        out[f"pred_{which}"] = preds[which]
        scores[which] = defense.detection_score(confidences, fusion)
    metrics = robustness_metrics(labels, preds["clean"], preds["adv"])
    if scores["clean"] is not None:  # a detector: clean images should pass, adversarial ones be flagged
        threshold = fusion.threshold if fusion else 0.0
        metrics |= detection_metrics(scores["clean"], scores["adv"], threshold)
        out |= {"detection_score_clean": scores["clean"], "detection_score_adv": scores["adv"],
                "flagged_clean": scores["clean"] > threshold, "flagged_adv": scores["adv"] > threshold}
    return out, {"metrics": metrics, "clamp": spec.clamp}


# -- helpers ------------------------------------------------------------------------------
def with_precision(encoder: torch.nn.Module, precision: str | None) -> torch.nn.Module:
    """The encoder as the spec's precision runs it: bf16 autocast + channels-last (float32
    features out), or itself (float32)."""
    if precision is None:
        return encoder
    if precision != "bf16":
        raise ValueError(f"unknown precision {precision!r}: None (float32) or 'bf16'")
    return FastEncoder(encoder.to(memory_format=torch.channels_last), amp=True, channels_last=True)


def _encoders(artifact: Artifact):
    return unpack_branches(artifact.tensors, artifact.meta)


def _heads(artifact: Artifact, params: HeadParams) -> list[torch.nn.Module]:
    heads = []
    for i, dim in enumerate(artifact.meta["feature_dims"]):
        head = make_head(dim, artifact.meta["num_classes"], params)
        head.load_state_dict(artifact.prefixed(f"branch{i}"))
        heads.append(head.eval())
    return heads


@torch.no_grad()
def encode_images(
    encoder: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512,
    delta: torch.Tensor | None = None, clamp: bool = True,
) -> torch.Tensor:
    """Features of uint8 images (optionally plus a universal or per-sample delta), batched."""
    from daebench.attacks import Attack

    # The images (uint8, a quarter of float32) and the delta go to the device once, the
    # features come back once: no host round trip per batch.
    encoder = encoder.to(device).eval()
    x = x.to(device, non_blocking=True)
    delta = delta.to(device) if delta is not None else None
    out = []
    for idx in batches(len(x), batch_size):
        idx = idx.to(device)
        xb = to_float(x[idx])
        if delta is not None:
            xb = Attack.apply(delta if delta.shape[0] == 1 else delta[idx], xb, clamp)
        out.append(encoder(xb).float())
    return torch.cat(out).cpu() if out else torch.empty(0)

"""`daebench probe`: what one device does, measured in minutes, written to one JSON.

1. **Ceiling**: ResNet18 forward + backward and forward-only throughput (images/s) at the
   probe's width, image sizes, batches and precision (bf16 autocast + channels-last on
   CUDA), the most a stage of that model can reach on this device.
2. **Stages at paper settings** on a slice of real data (CIFAR-10 (JPEG) when given, else
   digits): SSL pre-training (SimCLR, two views), an attack's crafting (EmbedAttack's
   per-sample PGD), adversarial fine-tuning (PGD-AT) and feature extraction, each as
   images/s and as a share of the ceiling. The share is the stage's work (the plugin's own
   `work` count of encoder passes, the estimator's model) timed at the ceiling's speed,
   over the stage's measured time: 1.0 would mean no time outside the encoder's passes.
3. **A grid end to end** on the device (the bundled `probe` grid: every attack x every
   defense, ZePAD's three branches included), through the
   executor a user would run there (Dask, one worker per GPU), then again with several
   workers sharing each GPU in a fresh store: the sharing speed-up, and whether the two
   layouts computed the same numbers.
4. **Against the CPU**: the grid's BA / RA beside a committed CPU record of the same grid
   (`float32` on both, so they differ by float noise only): the largest and the mean
   absolute difference, in points.
5. **Calibration and estimates**: the device's calibration of the paper grid's encoder
   configurations (the file `daebench estimate --calibration` reads), and the paper grid's
   estimate on 1 and on 8 such devices.

The JSON holds every figure with the settings that produced it; `tests/integration/
test_probe.py` runs the whole probe at a small setting on CPU so it cannot rot.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from daebench.errors import DAEBenchError


@dataclass
class ProbeSettings:
    """The probe's sizes. The defaults are the GPU probe's; the tests use a small setting."""

    device: str = "auto"
    width: int = 64
    image_sizes: tuple[int, ...] = (32, 64)
    batches: tuple[int, ...] = (256, 512)
    seconds: float = 2.0  # timing window of each ceiling measurement
    data: str = "imagefolder:probe-data/cifar10-jpeg"  # the stages' slice; digits when absent
    stage_image_size: int = 64  # the paper's
    stage_images: int = 4096  # images per stage measurement
    pretrain_method: str = "simclr"
    grid: str = "probe"
    executor: str = "dask"  # how step 3 runs (dask: one worker per GPU, as `daebench run --executor dask`)
    sharing_workers: int = 4  # workers per device in step 3's second run (0: skip it)
    cpu_record: str | None = "results/measured/2026-12-03-probe-grid-cpu"
    estimate_grids: tuple[str, ...] = ("paper",)
    estimate_gpus: tuple[int, ...] = (1, 8)
    work_dir: str = "probe-work"  # stores of step 3 (fresh each run) and the calibration


@dataclass
class ProbeReport:
    settings: dict[str, Any]
    device: dict[str, Any] = field(default_factory=dict)
    ceiling: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    grid: dict[str, Any] = field(default_factory=dict)
    versus_cpu: dict[str, Any] = field(default_factory=dict)
    estimates: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)


def _timed(report: ProbeReport, step: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return fn()
    finally:
        report.seconds[step] = round(time.perf_counter() - started, 2)
        print(f"probe: {step} done in {report.seconds[step]:.1f} s", flush=True)


def run_probe(settings: ProbeSettings, out: Path | None = None) -> ProbeReport:
    """Every step in order; the JSON is rewritten after each, so a probe cut short by its
    time limit still leaves what it measured."""
    from daebench.provenance import provenance
    from daebench.runtime import resolve_device

    device = str(resolve_device(settings.device))
    report = ProbeReport(settings=asdict(settings), device=provenance(device))
    if device.startswith("cuda"):
        report.device["name"] = torch.cuda.get_device_name()
        torch.backends.cudnn.benchmark = True

    def save() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(report.to_json())

    steps: list[tuple[str, Callable[[], None]]] = [
        ("ceiling", lambda: report.ceiling.extend(measure_ceiling(settings, device))),
        ("stages", lambda: report.stages.extend(measure_stages(settings, device, report.ceiling))),
        ("grid", lambda: report.grid.update(run_probe_grid(settings, device))),
        ("versus_cpu", lambda: report.versus_cpu.update(compare_with_record(settings, report.grid))),
        ("estimates", lambda: report.estimates.extend(estimate_on_device(settings, device))),
    ]
    for name, step in steps:
        _timed(report, name, step)
        save()
    return report


# -- 1. the ceiling -----------------------------------------------------------------------
def _bf16(device: str) -> bool:
    return device.startswith("cuda")


def measure_ceiling(settings: ProbeSettings, device: str) -> list[dict[str, Any]]:
    from daebench.encoders.backbones import default_conv1_padding
    from daebench.estimator import measure

    rows = []
    for size in settings.image_sizes:
        for batch in settings.batches:
            config = {"arch": "resnet18", "width": settings.width, "conv1_padding": default_conv1_padding("resnet18"),
                      "image_size": size, "amp": _bf16(device)}
            per = measure(config, device, batch, seconds=settings.seconds)
            rows.append({"arch": "resnet18", "width": settings.width, "image_size": size, "batch": batch,
                         "precision": "bf16+channels_last" if config["amp"] else "float32",
                         "train_images_per_s": round(1 / per["train"], 1),
                         "forward_images_per_s": round(1 / per["forward"], 1)})
    return rows


def _ceiling_at(ceiling: list[dict[str, Any]], size: int, batch: int) -> dict[str, Any]:
    """The ceiling row of this image size nearest in batch (the stage's own batch where measured)."""
    rows = [r for r in ceiling if r["image_size"] == size] or ceiling
    return min(rows, key=lambda r: abs(r["batch"] - batch))


# -- 2. the stages --------------------------------------------------------------------------
def _slice(settings: ProbeSettings):
    """The stages' data: `stage_images` training (and test) images drawn with seed 0 from
    the JPEG tree when it is there, else from digits (so a CPU test needs no files)."""
    from daebench import imagefolder
    from daebench.data import ImageData, load_dataset

    source = settings.data
    if source.startswith(imagefolder.PREFIX) and not Path(imagefolder.tree_root(source)).is_dir():
        source = "digits"
    data = load_dataset(source, image_size=settings.stage_image_size)
    n = settings.stage_images
    gen = torch.Generator().manual_seed(0)  # a class-mixed slice: the trees are stored class by class
    train = torch.randperm(len(data.y_train), generator=gen)[:n]
    test = torch.randperm(len(data.y_test), generator=gen)[:n]
    return source, ImageData(data.name, data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test],
                             data.num_classes)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_stages(settings: ProbeSettings, device: str, ceiling: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from daebench.attacks import ATTACKS
    from daebench.defenses import DEFENSES
    from daebench.encoders.backbones import build_encoder, default_conv1_padding
    from daebench.encoders.ssl import SSL_METHODS
    from daebench.encoders.ssl.base import pretrain
    from daebench.stages import encode_images, with_precision

    source, data = _slice(settings)
    torch_device = torch.device(device)
    bf16 = _bf16(device)
    switches = {"amp": bf16, "channels_last": bf16}
    precision = "bf16" if bf16 else None  # the craft and features specs' field
    size = settings.stage_image_size
    padding = default_conv1_padding("resnet18")

    def encoder():
        torch.manual_seed(0)
        return build_encoder("resnet18", settings.width, padding).to(torch_device)

    rows: list[dict[str, Any]] = []

    def record(stage: str, what: str, images: int, batch: int, seconds: float, work) -> None:
        top = _ceiling_at(ceiling, size, batch)
        at_ceiling = work.train / top["train_images_per_s"] + work.forward / top["forward_images_per_s"]
        rows.append({"stage": stage, "what": what, "data": source, "images": images, "image_size": size,
                     "batch": batch, "precision": top["precision"], "seconds": round(seconds, 3),
                     "images_per_s": round(images / seconds, 1), "encoder_passes": {"train": work.train, "forward": work.forward},
                     "ceiling_batch": top["batch"], "share_of_ceiling": round(at_ceiling / seconds, 3)})

    def run_twice(fn: Callable[[int], None], images: int) -> float:
        fn(min(images, 2 * 64))  # warm-up: kernels chosen, caches filled
        _sync(device)
        started = time.perf_counter()
        fn(images)
        _sync(device)
        return time.perf_counter() - started

    # SSL pre-training: one epoch of the paper recipe over the slice (two views per image)
    method = SSL_METHODS.get(settings.pretrain_method)
    n = len(data.x_train)

    def pretrain_on(images: int) -> None:
        params = method.resolve_params("paper", {"epochs": 1, "max_samples": images, **switches})
        pretrain(settings.pretrain_method, params, encoder(), data.x_train, seed=0, device=torch_device)

    params = method.resolve_params("paper", {"epochs": 1, "max_samples": n, **switches})
    record("pretrain", f"{settings.pretrain_method} (paper profile, 1 epoch)", n, min(params.batch_size, n),
           run_twice(pretrain_on, n), method.work(params.model_dump(), n))

    # crafting: EmbedAttack's per-sample PGD on the test slice, against a bf16 surrogate where bf16
    attack_cls = ATTACKS.get("embedattack")
    attack_params = attack_cls.resolve_params("paper")
    fast = with_precision(encoder().eval(), precision)
    m = len(data.x_test)

    def craft_on(images: int) -> None:
        attack_cls(attack_params, eps=10 / 255, seed=0, device=torch_device).craft(fast, data.x_test[:images])

    record("craft", "embedattack (paper profile)", m, getattr(attack_params, "batch_size", 256),
           run_twice(craft_on, m), attack_cls.work(attack_params.model_dump(), m))

    # adversarial fine-tuning: one epoch of PGD-AT (paper profile) on the slice
    defense_cls = DEFENSES.get("pgd_at")
    defense_params = defense_cls.resolve_params("paper", {"epochs": 1, **switches})
    victim = encoder()

    def defend_on(images: int) -> None:
        from daebench.data import ImageData
        from daebench.defenses.base import DefenseContext

        part = ImageData(data.name, data.x_train[:images], data.y_train[:images], data.x_test[:images],
                         data.y_test[:images], data.num_classes)
        defense_cls(defense_params, context=DefenseContext(seed=0, device=torch_device)).defend(victim, part)

    record("defend", "pgd_at (paper profile, 1 epoch)", n, defense_params.batch_size,
           run_twice(defend_on, n), defense_cls.work(defense_params.model_dump(), n))

    # features: one forward per image at the features stage's batch
    from daebench.plugins import Work

    extractor = with_precision(encoder(), precision)

    def features_on(images: int) -> None:
        encode_images(extractor, data.x_test[:images], torch_device, 512)

    record("features", "encode_images", m, 512, run_twice(features_on, m), Work(forward=m))
    return rows


# -- 3. a grid end to end -------------------------------------------------------------------
def _run_grid_once(settings: ProbeSettings, device: str, store: Path, workers_per_device: int) -> dict[str, Any]:
    import shutil

    from daebench.config import load_grid
    from daebench.executors import DaskExecutor, JoblibExecutor
    from daebench.results import run_grid

    shutil.rmtree(store, ignore_errors=True)
    grid = load_grid(settings.grid).model_copy(update={"device": device})
    devices = torch.cuda.device_count() if device.startswith("cuda") else 0
    if settings.executor == "dask":
        executor = DaskExecutor(workers=max(1, workers_per_device), gpus=devices, workers_per_gpu=workers_per_device)
    else:
        executor = JoblibExecutor(max(1, workers_per_device))
    started = time.perf_counter()
    try:
        report = run_grid(grid, cache_dir=store / "cache", runs_dir=store / "runs", executor=executor, progress=False,
                          raise_on_failure=False)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    wall = time.perf_counter() - started
    df = report.results
    return {"wall_seconds": round(wall, 2), "workers_per_device": workers_per_device, "devices": max(devices, 1),
            "executor": settings.executor, "cells": len(df), "failures": [f.label for f in report.failures],
            "stage_seconds": {k: round(v, 2) for k, v in report.seconds.items()},
            "results": df[["defense", "attack", "scenario", "D_d", "BA", "RA", "ASR"]].to_dict("records")}


def run_probe_grid(settings: ProbeSettings, device: str) -> dict[str, Any]:
    if settings.grid in ("", "none"):
        return {"skipped": "--grid none"}
    work = Path(settings.work_dir)
    first = _run_grid_once(settings, device, work / "grid-1", 1)
    out = {"grid": settings.grid, "one_worker_per_device": first}
    if settings.sharing_workers > 1:
        shared = _run_grid_once(settings, device, work / f"grid-{settings.sharing_workers}", settings.sharing_workers)
        out["shared_device"] = shared
        out["sharing_speedup"] = round(first["wall_seconds"] / shared["wall_seconds"], 3)
        out["layouts_agree"] = _differences(first["results"], shared["results"])
    return out


def _differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Largest and mean absolute differences of BA / RA (in points) over the cells both have."""
    import pandas as pd

    keys = ["defense", "attack", "scenario", "D_d"]
    merged = pd.DataFrame(a).merge(pd.DataFrame(b), on=keys, suffixes=("", "_other"))
    out: dict[str, Any] = {"cells_compared": len(merged)}
    for metric in ("BA", "RA"):
        diff = (merged[metric] - merged[f"{metric}_other"]).abs() * 100
        out[metric] = {"max_abs_points": round(float(diff.max()), 2) if len(diff) else None,
                       "mean_abs_points": round(float(diff.mean()), 3) if len(diff) else None,
                       "identical_cells": int((diff == 0).sum())}
    return out


# -- 4. against the CPU record --------------------------------------------------------------
def compare_with_record(settings: ProbeSettings, grid: dict[str, Any]) -> dict[str, Any]:
    if not settings.cpu_record or settings.cpu_record == "none" or "one_worker_per_device" not in grid:
        return {"skipped": "no CPU record named, or no grid run"}
    path = Path(settings.cpu_record) / "results.csv"
    if not path.is_file():
        return {"skipped": f"{path} does not exist"}
    import pandas as pd

    record = pd.read_csv(path)
    return {"record": str(settings.cpu_record),
            **_differences(grid["one_worker_per_device"]["results"], record.to_dict("records"))}


# -- 5. calibration and estimates -----------------------------------------------------------
def estimate_on_device(settings: ProbeSettings, device: str) -> list[dict[str, Any]]:
    from daebench.config import load_grid
    from daebench.estimator import Calibration, calibrate, encoder_configs, estimate_plan
    from daebench.plan import plan_grid

    calibration = Calibration(device)
    out = []
    for name in settings.estimate_grids:
        grid = load_grid(name).model_copy(update={"device": device})
        plan = plan_grid(grid)
        calibration = calibrate(encoder_configs(plan, grid), device, calibration)
        estimate = estimate_plan(plan, grid, calibration)
        for gpus in settings.estimate_gpus:
            out.append({"grid": name, "devices": gpus, "total_seconds": round(estimate.total / gpus, 1),
                        "stage_seconds": {k: round(v / gpus, 1) for k, v in estimate.by_stage().items()},
                        "stages": len(estimate.stages)})
            print(f"daebench estimate {name} --gpus {gpus}: {estimate.describe(workers=gpus, top=3)}", flush=True)
    path = Path(settings.work_dir) / f"calibration-{device.replace(':', '-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    calibration.save(path)
    out.append({"calibration_file": str(path), "calibration": {"device": calibration.device,
                                                               "configs": calibration.configs,
                                                               "flops": calibration.flops}})
    return out


def check_settings(settings: ProbeSettings) -> None:
    if settings.executor not in ("dask", "joblib"):
        raise DAEBenchError(f"probe executor '{settings.executor}' is not one of dask, joblib.")
    if settings.stage_images < 2 or not settings.image_sizes or not settings.batches:
        raise DAEBenchError("the probe needs at least 2 stage images, one image size and one batch size.")

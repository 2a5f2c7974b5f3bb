"""`daebench estimate`: what a grid will cost, before anything runs.

Cost = work x time per unit of work. The work of each stage the store lacks is counted
in encoder passes (`Work`: images through a forward + backward, and images through a
forward only) by the plugin that runs it (`Configurable.work`, from its resolved
parameters and the size of its data); features are one forward per image and branch.
The time per pass of each encoder configuration (architecture, width, image size) is
measured on the device in a few seconds (`calibrate`), or read from a saved
calibration, so a CPU machine can estimate a GPU run from a GPU's calibration file.
Heads and evaluations (small MLPs over cached features) are counted as free: they are
about 1% of a grid's time. What it cannot see (data loading, Python overhead of tiny
batches, contention) is why `run.json` records the estimate beside the actual times.
"""

from __future__ import annotations

import functools
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daebench.config import GridSpec
from daebench.errors import ConfigError
from daebench.plan import Node, Plan, plan_grid
from daebench.plugins import Work
from daebench.store import CALIBRATION_DIR, ArtifactStore

#: train / test sizes of the registered datasets (torchvision's splits; the ImageFolder
#: trees' sizes are counted when present, else these typical ones are assumed)
KNOWN_SIZES = {"cifar10": (50000, 10000), "stl10": (5000, 8000), "svhn": (73257, 26032), "gtsrb": (26640, 12630),
               "animals10": (20943, 5236), "imagenet20": (26000, 1000)}
CALIBRATION_VERSION = 1


@dataclass
class Calibration:
    """Seconds per image of a forward + backward and of a forward, per encoder configuration."""

    device: str
    configs: dict[str, dict[str, float]] = field(default_factory=dict)  # config key -> {"train": s, "forward": s}
    flops: dict[str, float] = field(default_factory=dict)  # config key -> forward FLOPs per image

    def seconds(self, config: dict[str, Any], work: Work) -> float:
        key = config_key(config)
        per = self.configs.get(key) or self._scaled(config)  # not measured: the measured ones scaled by FLOPs
        return work.train * per["train"] + work.forward * per["forward"]

    def _scaled(self, config: dict[str, Any]) -> dict[str, float]:
        measured = [k for k in self.configs if k in self.flops]
        if not measured:
            raise ConfigError(f"the calibration of {self.device} has no encoder configuration: run `daebench "
                              f"estimate GRID` on that device, which measures the grid's and keeps them in the store")
        flops = config_flops(config)
        return {kind: flops * sum(self.configs[k][kind] / self.flops[k] for k in measured) / len(measured)
                for kind in ("train", "forward")}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"version": CALIBRATION_VERSION, "device": self.device, "configs": self.configs,
                                    "flops": self.flops}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["device"], data["configs"], data.get("flops", {}))
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"Calibration file '{path}' cannot be read ({err}); a calibration file is the JSON "
                              f"`daebench estimate` keeps in the store, <cache>/{CALIBRATION_DIR}/<device>.json, "
                              f"of the device it ran on.") from None


def config_key(config: dict[str, Any]) -> str:
    fast = "/bf16-cl" if config.get("amp") else ""
    return f"{config['arch']}/w{config['width']}/p{config['conv1_padding']}/{config['image_size']}px{fast}"


def _build(config: dict[str, Any]):
    from daebench.encoders.backbones import build_encoder

    return build_encoder(config["arch"], config["width"], config["conv1_padding"])


@functools.lru_cache(maxsize=64)
def _flops_of(key: str, config_items: Any) -> float:
    return forward_flops(dict(config_items))


def config_flops(config: dict[str, Any]) -> float:
    """`forward_flops`, computed once per configuration."""
    return _flops_of(config_key(config), tuple(sorted(config.items())))


def forward_flops(config: dict[str, Any]) -> float:
    """FLOPs of one image's forward (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _build(config).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, config["image_size"], config["image_size"]))
    return float(counter.get_total_flops())


def measure(config: dict[str, Any], device: str, batch: int, seconds: float = 0.5) -> dict[str, float]:
    """Seconds per image of a forward + backward (train mode) and a forward (eval, no grad)."""
    import torch

    model = _build(config).to(device)
    x = torch.rand(batch, 3, config["image_size"], config["image_size"], device=device)
    fast = bool(config.get("amp"))  # the training stages' `amp` + `channels_last` switches
    if fast:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    autocast = functools.partial(torch.autocast, device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=fast)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(step) -> float:
        step()  # warm-up, finished before the clock starts
        sync()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 2:
            step()
            done += 1
        sync()
        return (time.perf_counter() - start) / (done * batch)

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast():
            loss = model(x).float().square().mean()
        loss.backward()

    def forward_step() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(x)

    return {"train": timed(train_step), "forward": timed(forward_step)}


def calibrate(configs: list[dict[str, Any]], device: str, calibration: Calibration | None = None) -> Calibration:
    """Measure each configuration not yet in `calibration` on the device (a few seconds
    each), at the training stages' batch size where it costs little."""
    cal = calibration or Calibration(device)
    for config in configs:
        key = config_key(config)
        if key in cal.configs and key in cal.flops:
            continue
        cal.flops[key] = forward_flops(config)
        batch = 256 if device.startswith("cuda") or cal.flops[key] < 2e8 else 32
        cal.configs[key] = measure(config, device, batch)
    return cal


def device_calibration(plan: Plan, grid: GridSpec, device: str, cache_dir: str | Path | None) -> Calibration:
    """This device's calibration, kept in the store (`calibration/<device>.json`) and
    extended with the configurations this grid adds: a second estimate measures nothing."""
    path = Path(cache_dir) / CALIBRATION_DIR / f"{device.replace(':', '-')}.json" if cache_dir is not None else None
    cal = Calibration.load(path) if path is not None and path.is_file() else Calibration(device)
    known = set(cal.configs)
    cal = calibrate(encoder_configs(plan, grid), device, cal)
    if path is not None and set(cal.configs) != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        cal.save(path)
    return cal


# -- the work of each stage ----------------------------------------------------------------
class _Sizes:
    """Images per dataset split, read from file headers or listings (never decoding images)."""

    def __init__(self, data_root: str | None) -> None:
        self.data_root = data_root
        self.assumed: set[str] = set()
        self._cache: dict[str, tuple[int, int]] = {}

    def count(self, source: str, split: str) -> int:
        if source not in self._cache:
            self._cache[source] = self._sizes(source)
        return self._cache[source][0 if split == "train" else 1]

    def _sizes(self, source: str) -> tuple[int, int]:
        from daebench import imagefolder
        from daebench.data import NPZ_PREFIX, default_data_root, load_dataset

        if source.startswith(NPZ_PREFIX):
            from daebench.data import npz_array_headers

            headers = npz_array_headers(Path(source[len(NPZ_PREFIX):]))
            return headers["y_train"][1][0], headers["y_test"][1][0]
        if source.startswith(imagefolder.PREFIX):
            _, files = imagefolder.listing(imagefolder.tree_root(source))
            return sum(f[0] == "train" for f in files), sum(f[0] != "train" for f in files)
        if source == "digits":
            d = load_dataset("digits")
            return len(d.y_train), len(d.y_test)
        tree = Path(self.data_root).expanduser() if self.data_root else default_data_root()
        if (tree / source / "train").is_dir():
            _, files = imagefolder.listing(tree / source)
            return sum(f[0] == "train" for f in files), sum(f[0] != "train" for f in files)
        self.assumed.add(source)
        return KNOWN_SIZES.get(source, (50000, 10000))


@dataclass
class StageEstimate:
    key: str
    stage: str
    label: str
    work: Work
    seconds: float
    flops: float = 0.0  # the work in FLOPs: a forward + backward counted as three forwards


@dataclass
class Estimate:
    device: str
    stages: list[StageEstimate]
    cached: int
    assumed_sizes: list[str]

    @property
    def total(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def work(self) -> Work:
        """The grid's work in image passes, whatever the device: with a device's measured
        throughput (`daebench probe`'s ceiling) it gives the time there."""
        return sum((s.work for s in self.stages), Work())

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    def by_stage(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for s in self.stages:
            out[s.stage] += s.seconds
        return dict(out)

    def describe(self, workers: int = 1, top: int = 10) -> str:
        from daebench.stages import STAGES

        per = self.by_stage()
        lines = [f"estimated {_duration(self.total / workers)} on {self.device}"
                 + (f" with {workers} in parallel (total work {_duration(self.total)})" if workers > 1 else "")
                 + f"; {len(self.stages)} stages to compute, {self.cached} already in the store"]
        lines += [f"  {stage:<10}{_duration(per[stage]):>12}" for stage in STAGES if stage in per]
        work = self.work
        lines.append(f"work: {work.train:.3g} image forward+backward passes and {work.forward:.3g} forward passes, "
                     f"{self.flops / 1e15:.3g} PFLOP (a backward counted as two forwards)")
        lines.append(f"the {min(top, len(self.stages))} most expensive stages:")
        for s in sorted(self.stages, key=lambda s: -s.seconds)[:top]:
            lines.append(f"  {_duration(s.seconds):>12}  {s.label}")
        if self.assumed_sizes:
            lines.append(f"sizes assumed (dataset not on this machine): {', '.join(sorted(self.assumed_sizes))}")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        """What run.json keeps: the total and per stage type, in seconds; and per stage
        (by artifact key), which the run writes to stages.csv beside the actual seconds."""
        return {"device": self.device, "total_seconds": round(self.total, 1), "flops": self.flops,
                "stage_seconds": {k: round(v, 1) for k, v in self.by_stage().items()},
                "stages": {s.key: round(s.seconds, 2) for s in self.stages}}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def encoder_configs(plan: Plan, grid: GridSpec) -> list[dict[str, Any]]:
    """The distinct encoder configurations (and precisions) the plan's stages run."""
    seen: dict[str, dict[str, Any]] = {}
    for node in plan.nodes.values():
        if node.stage in ("pretrain", "craft", "defend", "features"):
            config = stage_config(plan, node, grid)
            seen.setdefault(config_key(config), config)
    return list(seen.values())


def stage_config(plan: Plan, node: Node, grid: GridSpec) -> dict[str, Any]:
    """The encoder a stage runs (its victim's architecture at the grid's image size), in
    bf16 + channels_last where a training stage's `amp` switch says so."""
    arch = _victim(plan, node).spec.arch
    amp = ((node.stage in ("pretrain", "defend") and bool(getattr(node.spec, "params", {}).get("amp")))
           or getattr(node.spec, "precision", None) == "bf16")  # crafts and features under the grid's precision
    return {"arch": arch["arch"], "width": arch["width"], "conv1_padding": arch["conv1_padding"],
            "image_size": grid.image_size, "amp": amp}


def _victim(plan: Plan, node: Node) -> Node:
    """The encoder stage behind a craft, defend or features node."""
    while node.stage not in ("pretrain", "checkpoint"):
        refs = node.refs
        ref = refs.get("victim") or refs.get("model") or next((r for role, r in refs.items() if role.startswith("surrogate")), None)
        node = plan.nodes[ref.key]
    return node


def stage_work(plan: Plan, node: Node, sizes: _Sizes) -> Work:
    from daebench.attacks import ATTACKS
    from daebench.defenses import DEFENSES
    from daebench.encoders.ssl import SSL_METHODS

    spec = node.spec
    if node.stage == "pretrain":
        return SSL_METHODS.get(spec.method).work(spec.params, sizes.count(spec.data.source, "train"))
    if node.stage == "craft":
        attack = ATTACKS.get(spec.attack)
        images = sizes.count(spec.data.source, attack.craft_split())
        return attack.work(spec.params, images) * max(1, len(spec.surrogates))
    if node.stage == "defend":
        return DEFENSES.get(spec.defense).work(spec.params, sizes.count(spec.data.source, "train"))
    if node.stage == "features":
        model = plan.nodes[spec.model.key]
        branches = 1 + len(getattr(model.spec, "aux", ()))
        return Work(forward=sizes.count(spec.data.source, spec.data.split) * branches)
    return Work()  # checkpoint, head, evaluate: loads and small MLPs


def estimate_plan(plan: Plan, grid: GridSpec, calibration: Calibration, store: ArtifactStore | None = None) -> Estimate:
    sizes = _Sizes(grid.data_root)
    stages, cached = [], 0
    for node in plan.topological():
        if store is not None and store.exists(node.stage, node.key):
            cached += 1
            continue
        work = stage_work(plan, node, sizes)
        seconds = flops = 0.0
        if work:
            config = stage_config(plan, node, grid)
            seconds = calibration.seconds(config, work)
            flops = (3 * work.train + work.forward) * config_flops(config)
        stages.append(StageEstimate(node.key, node.stage, node.label, work, seconds, flops))
    return Estimate(calibration.device, stages, cached, sorted(sizes.assumed))


def estimate_grid(grid: GridSpec, device: str | None = None, calibration: Calibration | str | Path | None = None,
                  cache_dir: str | Path | None = None, plan: Plan | None = None, skip_cached: bool = True) -> Estimate:
    """The grid's predicted time on `device` (default: the grid's; measured now, or read
    from the store's calibration of it) or on the device of a saved calibration file.
    With `cache_dir` and `skip_cached`, artifacts already in that store cost nothing."""
    from daebench.runtime import resolve_device

    if isinstance(calibration, (str, Path)):
        calibration = Calibration.load(Path(calibration))
    if plan is None:
        # planned for the device it is estimated on: `precision: auto` is bf16 on CUDA
        target = calibration.device if calibration is not None else (device or grid.device)
        plan = plan_grid(grid.model_copy(update={"device": target}))
    if calibration is None:
        calibration = device_calibration(plan, grid, str(resolve_device(device or grid.device)), cache_dir)
    store = ArtifactStore(cache_dir) if skip_cached and cache_dir is not None and Path(cache_dir).is_dir() else None
    return estimate_plan(plan, grid, calibration, store)

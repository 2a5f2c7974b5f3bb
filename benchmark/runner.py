"""DAG -> executor -> store, with progress, failure isolation and a summary.

The runner asks the store which artifacts already exist (and verifies their
checksums): those are cache hits. The rest run in waves: every stage whose inputs
all exist runs in the current wave, through the executor. A stage that fails is
reported with its error; stages that depend on it are skipped; everything else
still runs and every completed artifact stays in the store, so nothing already
computed is lost and a re-run picks up exactly where this one stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from filelock import FileLock
from tqdm.auto import tqdm

from daebench.config import GridSpec
from daebench.errors import DAEBenchError, StageFailedError
from daebench.executors import Executor, JoblibExecutor
from daebench.paths import default_cache
from daebench.plan import Node, Plan, plan_grid
from daebench.specs import StageSpec
from daebench.stages import STAGES, StageContext
from daebench.store import ArtifactStore

log = logging.getLogger("daebench")


@dataclass
class NodeOutcome:
    key: str
    stage: str
    label: str
    seconds: float = 0.0
    error: str | None = None
    computed_elsewhere: bool = False  # another run or worker finished it while this one waited
    batch_size: int | None = None  # the inference batch size it ended with (halved after out-of-memory)


def execute_node(node: Node, store_root: str, ctx: StageContext, threads: int | None = None) -> NodeOutcome:
    """Load a node's inputs, run its stage, save the artifact. Top-level so workers can pickle it."""
    import torch

    from daebench.provenance import provenance as prov

    previous_threads = torch.get_num_threads()
    if threads:  # restored below: a stage run in this process must not change the caller's count
        torch.set_num_threads(threads)
    store = ArtifactStore(store_root)
    started = time.perf_counter()
    try:
        # One writer per artifact across processes, runs and Dask workers: an OS file lock
        # (released by the kernel if its holder dies, so a killed run leaves no stale lock).
        # Whoever gets it second finds the artifact done and skips the work.
        with FileLock(str(store.lock_path(node.key))):
            if store.verify(node.stage, node.key):
                return NodeOutcome(node.key, node.stage, node.label, 0.0, computed_elsewhere=True)
            started = time.perf_counter()  # the stage's own time, not time spent waiting for the lock
            inputs = {role: store.load(ref.stage, ref.key) for role, ref in node.refs.items()}
            if ctx.torch_device.type == "cuda":  # cudnn picks the fastest kernels for each shape it meets
                torch.backends.cudnn.benchmark = True
            scratch = store.scratch_path(node.key)
            tensors, meta, batch = _run_stage(node, dataclasses.replace(ctx, scratch=str(scratch)), inputs)
            _check_finite(node, tensors)
            seconds = time.perf_counter() - started
            store.save(node.stage, node.key, tensors, {
                "spec": node.spec.hashed(), "inputs": node.inputs, "label": node.label, "seconds": seconds,
                "provenance": prov(ctx.device), **meta,
            })
            shutil.rmtree(scratch, ignore_errors=True)
        return NodeOutcome(node.key, node.stage, node.label, seconds, batch_size=batch)
    except DAEBenchError as err:
        return NodeOutcome(node.key, node.stage, node.label, time.perf_counter() - started, str(err))
    except Exception:  # a bug or a resource failure: keep the traceback for the report
        return NodeOutcome(node.key, node.stage, node.label, time.perf_counter() - started, traceback.format_exc())
    finally:
        torch.set_num_threads(previous_threads)


INFERENCE_STAGES = ("features",)
MODEL_STAGES = ("pretrain", "checkpoint", "defend")


def _check_finite(node: Node, tensors: dict) -> None:
    """An encoder with NaN or infinite weights is never stored: every number downstream
    of it would be at chance, silently."""
    import torch

    if node.stage not in MODEL_STAGES:
        return
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise DAEBenchError(f"{node.label} produced NaN or infinite weights in {len(broken)} tensor(s) "
                            f"({', '.join(broken[:3])}): the training diverged. Lower its learning rate or use "
                            f"float32 (`precision: float32`); nothing was stored for it.")


def _run_stage(node: Node, ctx: StageContext, inputs: dict) -> tuple[dict, dict, int]:
    """Run the stage; when an inference stage runs out of device memory, halve its batch
    size and retry.

    Only `ctx.batch_size` of the inference stages (features) is halved: batching there
    changes results by floating-point rounding only. A training batch size is part of
    an algorithm's spec and is never changed behind the user's back, so a training
    stage that runs out of memory fails (with the error) like any other failure."""
    import torch

    while True:
        try:
            tensors, meta = STAGES[node.stage](ctx, node.spec, inputs)
            return tensors, meta, ctx.batch_size
        except torch.OutOfMemoryError:
            if node.stage not in INFERENCE_STAGES or ctx.batch_size <= 1:
                raise
            smaller = ctx.batch_size // 2
            log.warning("%s: out of device memory at batch size %d; retrying with %d", node.label, ctx.batch_size, smaller)
        if torch.cuda.is_available():  # outside the except block: the traceback no longer pins the tensors
            torch.cuda.empty_cache()
        ctx = dataclasses.replace(ctx, batch_size=smaller)


def _lost_worker(node: Node, err: BaseException) -> NodeOutcome:
    """The outcome of a stage whose worker process died under it (no traceback to keep)."""
    return NodeOutcome(node.key, node.stage, node.label, 0.0,
                       f"the worker running this stage died ({type(err).__name__}: {err}); "
                       f"every finished artifact is kept, re-run to retry it")


@dataclass
class RunReport:
    grid: GridSpec
    plan: Plan
    results: pd.DataFrame
    hits: Counter = field(default_factory=Counter)
    computed: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    failures: list[NodeOutcome] = field(default_factory=list)
    finished: list[NodeOutcome] = field(default_factory=list)  # the stages this run computed, in order
    skipped: int = 0
    corrupted: list[str] = field(default_factory=list)  # cached artifacts that failed their checksum
    changed_plugins: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> the warning
    wall_seconds: float = 0.0
    estimate: dict[str, Any] | None = None  # what `daebench estimate` predicted (run.json keeps it)
    run_dir: Path | None = None
    cache_dir: Path | None = None

    def summary(self) -> str:
        lines = [f"{'stage':<11}{'cached':>8}{'computed':>10}{'seconds':>10}"]
        for stage in STAGES:
            if self.hits[stage] or self.computed[stage]:
                lines.append(f"{stage:<11}{self.hits[stage]:>8}{self.computed[stage]:>10}{self.seconds[stage]:>10.1f}")
        lines.append(f"wall time {self.wall_seconds:.1f} s; {len(self.failures)} failed, {self.skipped} skipped"
                     + (f"; {len(self.corrupted)} corrupt cached artifact(s) quarantined and recomputed"
                        if self.corrupted else ""))
        return "\n".join(lines)


def check_device(device: str) -> None:
    """The grid's device, checked once before a run: a clear error, not one per stage."""
    import torch

    from daebench.errors import ConfigError

    text = str(device)
    if text == "auto" or text == "cpu":
        return
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{text}': this machine has no CUDA device (or this torch, "
                              f"{torch.__version__}, is built without CUDA). Use device 'cpu', or 'auto' to take a "
                              f"GPU where there is one.")
        index = text.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(f"device '{text}': this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
        return
    raise ConfigError(f"device '{text}' is not one DAEBench runs on: valid devices are auto, cpu, cuda and cuda:N.")


def check_writable(root: Path) -> None:
    """The store's directory exists (or can be made) and takes writes, said once."""
    from daebench.errors import StoreError

    if root.exists() and not root.is_dir():
        raise StoreError(f"The cache directory {root} is a file, not a directory: --cache-dir (or $DAEBENCH_CACHE) "
                         f"must name a directory, which is created if missing. Nothing was computed.")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StoreError(f"The cache directory {root} is not writable ({err.strerror or err}): the grid has artifacts "
                         f"to compute, and they are stored there. Pass a writable --cache-dir (or set "
                         f"$DAEBENCH_CACHE). Nothing was computed.") from None


def run_plan(grid: GridSpec, cache_dir: str | os.PathLike | None = None, executor: Executor | None = None,
             progress: bool = True, recompute: Iterable[str] = ()) -> RunReport:
    """Plan the grid and compute every artifact it needs that the store lacks. The
    results table and the run's record are the results layer's (`daebench.results.run_grid`).

    `recompute` names plugins (attacks, defenses, SSL methods) whose artifacts, and
    everything computed from them, are computed anew even when cached (the old ones are
    moved to the store's quarantine). A cached artifact made by a plugin whose source has
    changed since is reused, with a warning naming the plugin and the two remedies."""
    started = time.perf_counter()
    cache_dir = default_cache() if cache_dir is None else cache_dir
    executor = executor or JoblibExecutor(1)
    check_device(grid.device)  # once, before anything runs: not once per stage
    store = ArtifactStore(cache_dir)
    plan = plan_grid(grid)
    if not all(store.exists(n.stage, n.key) for n in plan.nodes.values()):
        check_writable(store.root)  # a store that has everything may be read-only
    store.clean_stale_tmp()
    ctx = StageContext(device=grid.device, data_root=grid.data_root, download=grid.download,
                       batch_size=grid.batch_size, progress=progress and executor.workers == 1)
    threads = max(1, (os.cpu_count() or 1) // executor.workers) if executor.workers > 1 else None
    report = RunReport(grid, plan, pd.DataFrame())

    stale = _recompute(plan, store, set(recompute))
    pending: dict[str, Node] = {}
    for node in plan.topological():
        status = "missing" if node.key in stale else store.status(node.stage, node.key)
        if status == "ok":
            report.hits[node.stage] += 1
            _note_changed_plugin(node, store, report)
        else:
            if status == "corrupt":
                report.corrupted.append(node.label)
                log.warning("%s: cached artifact failed its checksum; quarantined, recomputing", node.label)
            pending[node.key] = node
    done = set(plan.nodes) - set(pending)
    dead: set[str] = set()
    bar = tqdm(total=len(pending), desc=f"grid {grid.name}", unit="stage", disable=not progress)
    while pending:
        wave = [n for n in pending.values() if all(d in done for d in n.deps)]
        if not wave:
            break
        run_one = functools.partial(execute_node, store_root=str(store.root.resolve()), ctx=ctx, threads=threads)
        for outcome in executor.map(run_one, wave, on_error=_lost_worker):
            pending.pop(outcome.key)
            report.seconds[outcome.stage] += outcome.seconds
            bar.update(1)
            finished = sum(report.computed.values()) + len(report.failures) + 1
            log.info("[%d/%d] %s %s (%.1f s)", finished, bar.total, "failed:" if outcome.error else "done:",
                     outcome.label, outcome.seconds)
            if outcome.error is None:
                done.add(outcome.key)
                if outcome.computed_elsewhere:
                    report.hits[outcome.stage] += 1
                else:
                    report.computed[outcome.stage] += 1
                    report.finished.append(outcome)
                bar.set_postfix_str(outcome.label[:40])
            else:
                report.failures.append(outcome)
                for key in plan.descendants(outcome.key):
                    if pending.pop(key, None) is not None:
                        dead.add(key)
                        bar.update(1)
    bar.close()
    report.skipped = len(dead)
    report.cache_dir = store.root
    for message in report.changed_plugins.values():
        log.warning(message)
    report.wall_seconds = time.perf_counter() - started
    return report


PLUGIN_STAGES = {"craft": ("attack", "attack"), "defend": ("defense", "defense"), "pretrain": ("SSL method", "method")}


def _plugin_of(node: Node) -> tuple[str, str] | None:
    """(kind, registered name) of the plugin a node's stage runs, if any."""
    if node.stage not in PLUGIN_STAGES:
        return None
    kind, field_name = PLUGIN_STAGES[node.stage]
    return kind, getattr(node.spec, field_name)


def _plugin_class(kind: str, name: str):
    from daebench.attacks import ATTACKS
    from daebench.defenses import DEFENSES
    from daebench.encoders.ssl import SSL_METHODS

    return {"attack": ATTACKS, "defense": DEFENSES, "SSL method": SSL_METHODS}[kind].get(name)


def _recompute(plan: Plan, store: ArtifactStore, names: set[str]) -> set[str]:
    """Keys to compute anew: every artifact of the named plugins and all their descendants.
    The cached ones move to the quarantine (kept, never used)."""
    if not names:
        return set()
    known = {p[1] for node in plan.nodes.values() if (p := _plugin_of(node))}
    if unknown := sorted(names - known):
        raise DAEBenchError(f"--recompute names {', '.join(map(repr, unknown))}, which no stage of this grid runs. "
                            f"Plugins it runs: {', '.join(sorted(known))}. Nothing was recomputed.")
    roots = [node.key for node in plan.nodes.values() if (p := _plugin_of(node)) and p[1] in names]
    keys = set(roots).union(*(plan.descendants(key) for key in roots))
    for key in keys:
        store.quarantine(plan.nodes[key].stage, key, reason="recompute requested")
    return keys


def _note_changed_plugin(node: Node, store: ArtifactStore, report: RunReport) -> None:
    """Remember (once per plugin) that a cached artifact was made by other code than the
    plugin's current source, under the same `version`."""
    plugin = _plugin_of(node)
    if plugin is None or plugin in report.changed_plugins:
        return
    recorded = store.load_meta(node.stage, node.key).get("plugin", {}).get("digest")
    cls = _plugin_class(*plugin)
    if not recorded or recorded == cls.source_digest():
        return
    kind, name = plugin
    report.changed_plugins[plugin] = (
        f"{kind} '{name}': the cached {node.stage} artifact {node.key} (and perhaps others) was computed by a different "
        f"version of its code ({cls.__module__}; source digest {recorded} then, {cls.source_digest()} now) under the "
        f"same `version` ({cls.version}), and is reused. If the change alters what it computes, bump `version` in "
        f"{cls.__module__}.{cls.__name__}, or run `daebench run GRID --recompute {name}`.")


def run_stage(spec: StageSpec, label: str, cache_dir: str | os.PathLike | None = None, device: str = "auto",
              progress: bool = True) -> tuple[bool, dict[str, Any]]:
    """Compute one stage outside a grid (its inputs must be in the store), or find it
    cached: (cached, its metadata). Raises `StageFailedError` with the stage's error."""
    store = ArtifactStore(default_cache() if cache_dir is None else cache_dir)
    node = Node(spec, label, spec.key)
    cached = store.verify(node.stage, node.key)
    if not cached:
        outcome = execute_node(node, str(store.root.resolve()), StageContext(device=device, progress=progress))
        if outcome.error:
            raise StageFailedError(f"{label} failed:\n{outcome.error}")
    return cached, store.load_meta(node.stage, node.key)


def failure_message(report: RunReport) -> str:
    parts = [f"{len(report.failures)} stage(s) failed ({report.skipped} dependent stage(s) skipped); "
             f"every other artifact was computed and kept, so a re-run resumes from here."]
    for f in report.failures[:5]:
        first = f.error.strip().splitlines()
        # A clean DAEBenchError is one paragraph; a traceback's last line says what broke.
        parts.append(f"[{f.label}] {first[-1] if len(first) > 1 and first[0].startswith('Traceback') else f.error.strip()}")
    return " ".join(parts)

"""Executors: run independent stages, locally with joblib or on a Dask cluster.

The seam is deliberately small: `map(fn, items, on_error)` yields `fn(item)` for
each item, in any order. The runner calls it once per wave of stages whose inputs
exist, so an executor needs no knowledge of the DAG. When a worker process dies
(killed, out of host memory, segfault) the items it took yield
`on_error(item, error)` instead: one failed stage, not a lost run.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_error: Callable[[T, BaseException], R]) -> Iterator[R]: ...


def _indexed(fn: Callable[[T], R], index: int, item: T) -> tuple[int, R]:
    return index, fn(item)


class JoblibExecutor:
    """`workers` = 1 runs in this process (torch gets every core); more uses loky processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_error: Callable[[T, BaseException], R]) -> Iterator[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        from joblib import Parallel, delayed

        from joblib.externals.loky.process_executor import BrokenProcessPool, TerminatedWorkerError

        pending = dict(enumerate(items))
        jobs = [delayed(_indexed)(fn, i, item) for i, item in pending.items()]
        try:
            for index, result in Parallel(n_jobs=self.workers, return_as="generator_unordered")(jobs):
                del pending[index]
                yield result
        except (TerminatedWorkerError, BrokenProcessPool) as err:
            # A worker died: joblib abandons the batch, so every unfinished item fails with it.
            for item in pending.values():
                yield on_error(item, err)


class DaskExecutor:
    """Stages on dask.distributed workers: an existing scheduler (`address`), or a
    LocalCluster of `workers` single-threaded processes started here (on CUDA,
    `workers_per_gpu` per visible GPU, worker i pinned to GPU i mod the GPU count: small
    stages leave a large GPU idle between kernels, and several processes fill it).

    Every worker opens the same artifact store (a shared filesystem path), so results
    land where a local run would put them; file locks in the runner make each artifact
    computed once even when several runs or workers race for it."""

    def __init__(self, address: str | None = None, workers: int = 2, gpus: int = 0, workers_per_gpu: int = 1) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if workers_per_gpu < 1:
            raise ValueError(f"workers per GPU must be >= 1, got {workers_per_gpu}")
        if address:
            self.client = Client(address)
        else:
            n = gpus * workers_per_gpu or workers
            if n < 1:
                raise ValueError(f"workers must be >= 1, got {n}")
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        host="127.0.0.1")
            self.client = Client(self.cluster)
            if gpus:
                self.client.register_plugin(_pin_gpu_plugin())
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))

    def map(self, fn: Callable[[T], R], items: Iterable[T],
            on_error: Callable[[T, BaseException], R]) -> Iterator[R]:
        from distributed import as_completed

        items = list(items)
        futures = self.client.map(fn, items, pure=False)
        item_of = {future.key: item for future, item in zip(futures, items)}
        # A task whose worker dies is retried elsewhere (`distributed.scheduler.allowed-failures`
        # times), then errs with KilledWorker: that stage fails, the others go on.
        for future in as_completed(futures):
            if future.status == "error":
                yield on_error(item_of[future.key], future.exception())
            else:
                yield future.result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _pin_gpu_plugin():  # pragma: no cover - needs GPUs
    """A worker plugin: worker i uses GPU i (LocalCluster names its workers 0..n-1)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class PinGPU(WorkerPlugin):
        def setup(self, worker) -> None:
            import torch

            torch.cuda.set_device(int(worker.name) % torch.cuda.device_count())

    return PinGPU()


"""Executors: run independent stages, locally with joblib or on a Dask cluster.

The seam is deliberately small: `map(fn, items)` yields `fn(item)` for each item,
in any order. The runner calls it once per wave of stages whose inputs exist, so
an executor needs no knowledge of the DAG.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    workers: int

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class JoblibExecutor:
    """`workers` = 1 runs in this process (torch gets every core); more uses loky processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
            return
        from joblib import Parallel, delayed

        yield from Parallel(n_jobs=self.workers, return_as="generator_unordered")(delayed(fn)(i) for i in items)


class DaskExecutor:
    """Stages on dask.distributed workers: an existing scheduler (`address`), or a
    LocalCluster of `workers` single-threaded processes started here (one per visible
    GPU when the grid runs on CUDA: each worker pins its own device).

    Every worker opens the same artifact store (a shared filesystem path), so results
    land where a local run would put them; file locks in the runner make each artifact
    computed once even when several runs or workers race for it."""

    def __init__(self, address: str | None = None, workers: int = 2, gpus: int = 0) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if address:
            self.client = Client(address)
        else:
            n = gpus or workers
            if n < 1:
                raise ValueError(f"workers must be >= 1, got {n}")
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                        host="127.0.0.1")
            self.client = Client(self.cluster)
            if gpus:
                self.client.register_plugin(_pin_gpu_plugin())
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        from distributed import as_completed

        futures = self.client.map(fn, list(items), pure=False)
        for _, result in as_completed(futures, with_results=True):
            yield result

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


EXECUTORS = {"joblib": JoblibExecutor, "dask": DaskExecutor}

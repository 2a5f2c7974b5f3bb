"""Executors: run independent stages, locally with joblib (later: on Dask).

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


EXECUTORS = {"joblib": JoblibExecutor}

"""The Python API, for notebooks: `daebench.run`, `daebench.load_results`, `daebench.estimate`.

Each is the command of the same name as a function returning pandas / objects instead of
printing, behind the same error boundary as the command line: a `DAEBenchError` (bad
input) passes through as it is, one readable paragraph; any other exception becomes an
`InternalError` naming the call, with the original exception (and its traceback) kept as
its `__cause__`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

from daebench.errors import DAEBenchError

F = TypeVar("F", bound=Callable[..., Any])


class InternalError(DAEBenchError):
    """An exception DAEBench did not foresee, raised from inside an API call (a bug)."""


def boundary(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DAEBenchError:
            raise
        except Exception as err:
            shown = ", ".join([repr(a)[:60] for a in args] + [f"{k}={v!r}"[:60] for k, v in kwargs.items()])
            raise InternalError(f"daebench.{fn.__name__}({shown}) failed with an internal error "
                                f"({type(err).__name__}: {err}). Its input passed every check, so this is a bug: "
                                f"please report it with the traceback (this exception's __cause__). Every artifact "
                                f"computed before it is kept in the store.") from err
    return wrapper  # type: ignore[return-value]


def _grid(grid: Any, overrides: dict[str, Any], only: Any = None):
    from daebench.config import GridSpec, load_grid, parse_grid
    from daebench.slicing import slice_grid

    if isinstance(grid, GridSpec):
        spec = grid
    elif isinstance(grid, dict):
        spec = parse_grid(grid)
    else:
        spec = load_grid(str(grid))
    if overrides:  # re-validated whole, so an override gets the grid file's clear errors
        spec = parse_grid({**spec.model_dump(mode="json"), **overrides}, where=f"(grid '{spec.name}' with overrides)")
    return slice_grid(spec, only)


@boundary
def run(grid: Any = "quick", *, cache_dir: str | Path | None = None, runs_dir: str | Path | None = "default",
        workers: int = 1, progress: bool = False, only: dict[str, Any] | list[str] | None = None, **overrides: Any):
    """Run a grid (a bundled name, a YAML path, a dict or a GridSpec; keyword arguments
    override its top-level keys, e.g. `eps=["8/255"]`, `device="cuda"`) and return its
    results table (one row per cell), as `daebench run` does. Cached artifacts are reused.
    `only` runs a slice, as `--only` does: `only={"attack": "embedattack", "defense": ["zepad", "none"]}`."""
    from daebench.executors import JoblibExecutor
    from daebench.results import run_grid
    if not isinstance(workers, int) or workers < 1:
        raise DAEBenchError(f"workers={workers!r}: the number of stages run in parallel must be a whole number "
                            f"of at least 1.")
    spec = _grid(grid, overrides, only)  # the device is checked by the runner, before anything runs
    report = run_grid(spec, cache_dir=cache_dir, runs_dir=runs_dir, executor=JoblibExecutor(workers),
                      progress=progress)
    return report.results


@boundary
def load_results(run: str | Path, runs_dir: str | Path | None = None):
    """The results table of a run: its name under `runs_dir` (default results/runs) or its
    directory (a committed record under results/measured/ too)."""
    from daebench.paths import default_runs
    from daebench.results import load_run

    return load_run(run, runs_dir if runs_dir is not None else default_runs()).results


@boundary
def estimate(grid: Any = "quick", *, device: str | None = None, calibration: str | Path | None = None,
             cache_dir: str | Path | None = None, gpus: int = 1, only: dict[str, Any] | list[str] | None = None,
             **overrides: Any):
    """`daebench estimate` as an object: `.total` (seconds on one device; divide by `gpus`
    for a spread), `.by_stage()`, `.stages`, `.describe(workers=gpus)`."""
    from daebench.estimator import estimate_grid

    if not isinstance(gpus, int) or gpus < 1:
        raise DAEBenchError(f"gpus={gpus!r}: the number of devices the grid is spread over must be at least 1.")
    return estimate_grid(_grid(grid, overrides, only), device=device, calibration=calibration, cache_dir=cache_dir)

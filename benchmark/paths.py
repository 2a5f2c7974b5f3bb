"""Where DAEBench keeps things by default: one place, read by every command.

`DAEBENCH_CACHE` (the artifact store, default results/cache), `DAEBENCH_RUNS` (run
records: results tables, grids, provenance; default results/runs), `DAEBENCH_REPORTS`
(tables and plots, default results/reports) and `DAEBENCH_DATA` (downloaded datasets).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache() -> Path:
    return Path(os.environ.get("DAEBENCH_CACHE", "results/cache"))


def default_runs() -> Path:
    return Path(os.environ.get("DAEBENCH_RUNS", "results/runs"))


def default_reports() -> Path:
    return Path(os.environ.get("DAEBENCH_REPORTS", "results/reports"))

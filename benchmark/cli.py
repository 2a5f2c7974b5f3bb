"""`daebench ...`: run, list, validate, results.

Errors a user can cause are printed as one paragraph, without a traceback, and
exit with status 2; a grid whose stages failed exits with 1 after keeping every
artifact it did compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.errors import DAEBenchError

LISTABLE = ("attacks", "defenses", "encoders", "datasets", "ssl")


def _registries():
    from attacks import ATTACKS
    from benchmark.data import DATASETS
    from benchmark.encoders import ENCODERS
    from benchmark.encoders.ssl import SSL_METHODS
    from defenses import DEFENSES

    return {"attacks": ATTACKS, "defenses": DEFENSES, "encoders": ENCODERS, "datasets": DATASETS, "ssl": SSL_METHODS}


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.config import load_grid
    from benchmark.executors import JoblibExecutor
    from benchmark.run import format_results, run_grid
    from benchmark.runtime import configure_threads

    configure_threads()
    if args.no_progress:  # one line per finished stage instead of bars (CI logs)
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    grid = load_grid(args.config)
    if args.device:
        grid = grid.model_copy(update={"device": args.device})
    report = run_grid(grid, cache_dir=args.cache_dir, runs_dir=args.runs_dir, executor=JoblibExecutor(args.workers),
                      progress=not args.no_progress, raise_on_failure=False)
    print(format_results(report.results))
    print()
    print(report.summary())
    if report.run_dir:
        print(f"results: {report.run_dir / 'results.csv'}")
    if report.failures:
        from benchmark.run import failure_message

        print(f"\nerror: {failure_message(report)}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    registries = _registries()
    kinds = [args.kind] if args.kind else list(LISTABLE)
    for kind in kinds:
        reg = registries[kind]
        print(f"{kind}:")
        for name in reg.names():
            obj = reg.get(name)
            doc = (obj.__doc__ or "").strip().splitlines()
            profiles = getattr(obj, "profile_names", None)
            extra = f"  [profiles: {', '.join(profiles())}]" if profiles else ""
            print(f"  {name:<14}{doc[0] if doc else ''}{extra}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from benchmark.config import load_grid
    from benchmark.plan import plan_grid

    grid = load_grid(args.config)
    plan = plan_grid(grid) if args.plan else None
    cells = len(grid.encoders) * len(grid.attacks) * len(grid.defenses) * len(grid.fine_tune_data) \
        * len(grid.downstream) * len(grid.eps) * len(grid.seeds)
    print(f"{args.config}: valid grid '{grid.name}' with {cells} cells"
          + (f" and {len(plan.nodes)} unique stages" if plan else ""))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from benchmark.run import format_results

    path = Path(args.run)
    csv = path / "results.csv" if path.is_dir() else Path(args.runs_dir) / args.run / "results.csv"
    if not csv.is_file():
        runs = sorted(p.name for p in Path(args.runs_dir).glob("*") if (p / "results.csv").is_file())
        raise DAEBenchError(f"No results for run '{args.run}' (looked for {csv}). "
                            f"Runs with results: {', '.join(runs) or 'none yet: start one with `daebench run`'}.")
    print(format_results(pd.read_csv(csv)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from benchmark.run import DEFAULT_CACHE, DEFAULT_RUNS

    parser = argparse.ArgumentParser(prog="daebench", description="Downstream-agnostic adversarial examples vs. defenses of SSL encoders.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid (default: the embedded quick grid)")
    run.add_argument("config", nargs="?", default="quick", help="bundled grid name (quick, ci, paper) or a YAML path")
    run.add_argument("--workers", type=int, default=1, help="stages run in parallel (joblib processes)")
    run.add_argument("--device", help="override the grid's device (auto, cpu, cuda, cuda:1)")
    run.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="artifact store (default %(default)s)")
    run.add_argument("--runs-dir", default=str(DEFAULT_RUNS), help="where results tables go (default %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(fn=cmd_run)

    lst = sub.add_parser("list", help="list registered plugins")
    lst.add_argument("kind", nargs="?", choices=LISTABLE)
    lst.set_defaults(fn=cmd_list)

    val = sub.add_parser("validate", help="validate a grid config without running it")
    val.add_argument("config")
    val.add_argument("--plan", action="store_true", help="also expand the stage DAG (reads dataset files to hash them)")
    val.set_defaults(fn=cmd_validate)

    res = sub.add_parser("results", help="print the BA/RA/ASR table of a run")
    res.add_argument("run", help="run name (the grid's name) or a run directory")
    res.add_argument("--runs-dir", default=str(DEFAULT_RUNS))
    res.set_defaults(fn=cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DAEBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every completed artifact is kept; re-run to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

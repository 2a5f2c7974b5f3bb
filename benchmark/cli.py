"""`daebench ...`: run, list, validate, results, tables, plots, leaderboard.

Errors a user can cause are printed as one paragraph, without a traceback, and
exit with status 2; a grid whose stages failed exits with 1 after keeping every
artifact it did compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daebench.errors import DAEBenchError

LISTABLE = ("attacks", "defenses", "encoders", "datasets", "ssl")


def _registries():
    from daebench.attacks import ATTACKS
    from daebench.data import DATASETS
    from daebench.encoders import ENCODERS
    from daebench.encoders.ssl import SSL_METHODS
    from daebench.defenses import DEFENSES

    return {"attacks": ATTACKS, "defenses": DEFENSES, "encoders": ENCODERS, "datasets": DATASETS, "ssl": SSL_METHODS}


def cmd_encoders(args: argparse.Namespace) -> int:
    from daebench.encoders.zoo import list_encoders

    if args.encoders_command == "list":
        rows = list_encoders(args.cache_dir)
        if not rows:
            print(f"No encoders cached under {args.cache_dir}.")
            return 0
        import pandas as pd

        print(pd.DataFrame(rows).to_string(index=False))
        return 0
    from daebench.config import parse_overrides
    from daebench.plan import standalone_encoder
    from daebench.runner import run_stage

    overrides = parse_overrides(args.set)
    width = args.width or (16 if args.profile == "tiny" else 64)
    encoder, spec = standalone_encoder(args.method, args.dataset, args.profile, width, args.seed, overrides)
    cached, meta = run_stage(spec, f"pretrain {encoder.name}", args.cache_dir, args.device)
    print(f"{'cache hit' if cached else 'trained'}: {encoder.name} (key {spec.key[:12]}) "
          f"kNN accuracy {meta['knn_accuracy']:.4f} (random init {meta.get('random_init_knn_accuracy', float('nan')):.4f}), "
          f"{meta['seconds'] / 60:.1f} min")
    return 0


def _sliced(grid, args: argparse.Namespace):
    """The grid narrowed by `--only KEY=V[,V...]` (each stage keeps its key, so the cache is shared)."""
    from daebench.slicing import slice_grid

    return slice_grid(grid, getattr(args, "only", None))


def cmd_run(args: argparse.Namespace) -> int:
    from daebench.config import load_grid
    from daebench.executors import JoblibExecutor
    from daebench.results import format_results, run_grid
    from daebench.runtime import configure_threads

    configure_threads()
    if not args.no_progress and not sys.stderr.isatty():  # a log file or a pipe: bars would be noise
        args.no_progress = True
    if args.no_progress:  # one line per finished stage instead of bars (CI logs)
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.workers < 1 or args.workers_per_gpu < 1:
        bad = f"--workers {args.workers}" if args.workers < 1 else f"--workers-per-gpu {args.workers_per_gpu}"
        raise DAEBenchError(f"{bad}: the number of stages run in parallel must be a whole number of at least 1 "
                            f"(1, the default, runs every stage in this process with every core).")
    grid = _sliced(load_grid(args.config), args)
    if args.device:
        grid = grid.model_copy(update={"device": args.device})
    from daebench.runner import check_device

    check_device(grid.device)
    if args.executor == "dask":
        from daebench.executors import DaskExecutor

        gpus = 0
        if not args.scheduler and str(grid.device).startswith(("cuda", "auto")):
            import torch

            gpus = torch.cuda.device_count()  # locally: one worker per visible GPU
        executor = DaskExecutor(args.scheduler, workers=args.workers if args.workers > 1 else 2, gpus=gpus,
                                workers_per_gpu=args.workers_per_gpu)
    else:
        if args.scheduler:
            raise DAEBenchError("--scheduler needs --executor dask.")
        executor = JoblibExecutor(args.workers)
    estimate = None
    if not args.no_estimate:
        from daebench.estimator import estimate_grid

        estimate = estimate_grid(grid, cache_dir=args.cache_dir)
        print(estimate.describe(workers=args.workers, top=3), flush=True)
    try:
        report = run_grid(grid, cache_dir=args.cache_dir, runs_dir=args.runs_dir, executor=executor,
                          progress=not args.no_progress, raise_on_failure=False, recompute=args.recompute,
                          estimate=estimate.record() if estimate else None)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    print(format_results(report.results))
    print()
    print(report.summary())
    if report.run_dir:
        print(f"results: {report.run_dir / 'results.csv'}")
    if report.failures:
        from daebench.runner import failure_message

        print(f"\nerror: {failure_message(report)}", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    registries = _registries()
    kinds = [args.kind] if args.kind else list(LISTABLE)
    rows = {kind: [] for kind in kinds}
    for kind in kinds:
        reg = registries[kind]
        for name in reg.names():
            obj = reg.get(name)
            doc = (obj.__doc__ or "").strip().splitlines()
            profiles = getattr(obj, "profile_names", None)
            rows[kind].append((name, ", ".join(profiles()) if profiles else "", doc[0] if doc else ""))
    # one set of columns for every kind, so long names never push a row out of line
    name_w = max((len(r[0]) for rs in rows.values() for r in rs), default=4) + 2
    prof_w = max((len(r[1]) for rs in rows.values() for r in rs), default=0) + 2
    indent = 2 + name_w + prof_w
    width = max(indent + 30, shutil.get_terminal_size((120, 24)).columns)
    print(f"  {'name':<{name_w}}{'profiles':<{prof_w}}description")
    for kind in kinds:
        print(f"{kind}:")
        for name, profiles, doc in rows[kind]:
            lines = textwrap.wrap(doc, width - indent) or [""]
            print(f"  {name:<{name_w}}{profiles:<{prof_w}}{lines[0]}".rstrip())
            for line in lines[1:]:
                print(" " * indent + line)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from daebench.config import load_grid
    from daebench.plan import plan_grid

    grid = _sliced(load_grid(args.config), args)
    plan = plan_grid(grid) if args.plan else None
    cells = len(plan.cells) if plan else grid.cell_count()
    print(f"{args.config}: valid grid '{grid.name}' with {cells} cells"
          + (f" and {len(plan.nodes)} unique stages" if plan else ""))
    if plan:
        from collections import Counter

        from daebench.stages import STAGES

        counts = Counter(node.stage for node in plan.nodes.values())
        print("stages: " + ", ".join(f"{stage} {counts[stage]}" for stage in STAGES if counts[stage]))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from daebench.config import load_grid
    from daebench.estimator import estimate_grid

    grid = _sliced(load_grid(args.config), args)
    if args.gpus < 1:
        raise DAEBenchError(f"--gpus {args.gpus}: the number of devices the grid is spread over must be at least 1.")
    estimate = estimate_grid(grid, device=args.device, calibration=args.calibration, cache_dir=args.cache_dir,
                             skip_cached=not args.ignore_cache)
    print(estimate.describe(workers=args.gpus, top=args.top))
    if args.gpus > 1:
        print(f"(spread over {args.gpus} devices: the total divided evenly, a lower bound -- stages wait for their inputs)")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace

    from daebench.probe import ProbeSettings, check_settings, run_probe

    given = {f.name: getattr(args, f.name) for f in fields(ProbeSettings) if getattr(args, f.name, None) is not None}
    settings = replace(ProbeSettings(), **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    check_settings(settings)
    out = Path(args.out)
    report = run_probe(settings, out)
    print(f"probe: {out} written ({sum(report.seconds.values()):.0f} s)")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from daebench.results import format_results, load_run

    print(format_results(load_run(args.run, args.runs_dir).results))
    return 0


def _context(args: argparse.Namespace) -> dict:
    """The table/plot context options (None = the paper's default, or what the run has)."""
    eps = None
    if args.eps:
        from daebench.config import parse_fraction

        try:
            eps = parse_fraction(args.eps)
        except ValueError as err:
            raise DAEBenchError(f"--eps: {err}") from None
    return {"defense": args.defense, "attack": args.attack, "eps": eps, "downstream": args.downstream,
            "sweep": args.sweep, "pretrain": args.pretrain}


def cmd_tables(args: argparse.Namespace) -> int:
    from daebench.paths import default_reports
    from daebench.report.tables import TABLES, write_tables
    from daebench.results import load_run

    run = load_run(args.run, args.runs_dir)
    names = [TABLES.check(n) for n in args.table] if args.table else None
    paper = None
    if args.paper:
        from daebench.report.paper import paper_results

        paper = paper_results()
    out = Path(args.out) if args.out else default_reports() / run.name / "tables"
    when = sorted(run.results.time_utc.dropna())[-1][:10] if "time_utc" in run.results else "date unrecorded"
    header = (f"# Tables of run `{run.name}`\n\n{run.info.get('description', '')}; results computed up to {when} "
              f"(every row's date, commit, versions and device are in the run's results.csv). "
              f"Regenerate: `daebench tables {run.name}{' --paper' if args.paper else ''}`.")
    files = write_tables(run.results, out, paper, names, header, **_context(args))
    print(f"{len(files)} files in {out} (index: {files[0]})")
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    from daebench.paths import default_reports
    from daebench.report.plots import PLOTS, write_plots
    from daebench.results import load_run

    run = load_run(args.run, args.runs_dir)
    names = [PLOTS.check(n) for n in args.plot] if args.plot else None
    out = Path(args.out) if args.out else default_reports() / run.name / "plots"
    files, skipped = write_plots(run, out, names, encoder=args.encoder, **_context(args))
    print(f"{len(files)} files in {out}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from daebench.report.leaderboard import update

    from daebench.report.leaderboard import reproduction_check

    if args.reproduce:
        check = reproduction_check(args.reproduce, Path(args.file), Path(args.runs_dir))
        if check.problems:
            print(f"run '{args.reproduce}' does not reproduce its record in {args.file} ({len(check.problems)} cell(s)):\n  "
                  + "\n  ".join(check.problems[:20]), file=sys.stderr)
            return 1
        if check.same_machine:
            print(f"run '{args.reproduce}' reproduces its record in {args.file} (BA, RA, ASR to 0.1 point).")
        else:
            print(f"run '{args.reproduce}' has every cell of its record in {args.file}, but ran on another machine "
                  f"({check.machines[1]}) than the record ({check.machines[0]}): float32 kernels differ there, so "
                  f"cells are compared, not required to match; {len(check.differences)} differ"
                  + (":\n  " + "\n  ".join(check.differences[:20]) if check.differences else "."))
    changed, _ = update(Path(args.file), Path(args.runs_dir), args.runs or None, check=args.check)
    return _generated_section_outcome(changed, args.check, args.file, "leaderboard", "")


def cmd_records(args: argparse.Namespace) -> int:
    from daebench.report.records import update

    changed, _ = update(Path(args.file), Path(args.measured), check=args.check)
    return _generated_section_outcome(changed, args.check, args.file, "records", "'s index")


def _generated_section_outcome(changed: bool, check: bool, file: str, command: str, what: str) -> int:
    """What `leaderboard` / `records` print and return once their generated section is rebuilt."""
    if check:
        if changed:
            print(f"{file}{what} is stale: run `daebench {command}` and commit it.", file=sys.stderr)
            return 1
        print(f"{file}{what} is up to date.")
        return 0
    print(f"{file} {'rewritten' if changed else 'already up to date'}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from daebench.paths import default_cache, default_runs

    DEFAULT_CACHE, DEFAULT_RUNS = default_cache(), default_runs()

    parser = argparse.ArgumentParser(prog="daebench", description="Downstream-agnostic adversarial examples vs. defenses of SSL encoders.")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid (default: the embedded quick grid)")
    run.add_argument("config", nargs="?", default="quick", help="bundled grid name (quick, ci, paper) or a YAML path")
    run.add_argument("--only", action="append", metavar="KEY=V[,V...]", help="run a slice of the grid: keys attack, "
                     "defense, encoder, D_d, D_f, eps, seed, scenario; repeatable (e.g. --only attack=embedattack "
                     "--only defense=zepad,none)")
    run.add_argument("--workers", type=int, default=1, help="stages run in parallel (joblib processes; dask: local workers)")
    run.add_argument("--executor", choices=["joblib", "dask"], default="joblib",
                     help="joblib (this machine) or dask (a LocalCluster, or --scheduler)")
    run.add_argument("--workers-per-gpu", type=int, default=1, metavar="K",
                     help="dask on local GPUs: K workers share each GPU (small stages leave a large GPU idle)")
    run.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://10.0.0.5:8786")
    run.add_argument("--device", help="override the grid's device (auto, cpu, cuda, cuda:1)")
    run.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="artifact store (default %(default)s)")
    run.add_argument("--runs-dir", default=str(DEFAULT_RUNS), help="where results tables go (default %(default)s)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-estimate", action="store_true", help="skip the cost estimate printed before the run")
    run.add_argument("--recompute", action="append", default=[], metavar="NAME",
                     help="compute this plugin's artifacts (and all that depends on them) anew, even if cached; repeatable")
    run.set_defaults(fn=cmd_run)

    est = sub.add_parser("estimate", help="the predicted wall time of a grid, before running it")
    est.add_argument("config", nargs="?", default="quick", help="bundled grid name or a YAML path")
    est.add_argument("--only", action="append", metavar="KEY=V[,V...]", help="run a slice of the grid: keys attack, "
                     "defense, encoder, D_d, D_f, eps, seed, scenario; repeatable (e.g. --only attack=embedattack "
                     "--only defense=zepad,none)")
    est.add_argument("--device", help="device to calibrate on now (default: the grid's)")
    est.add_argument("--gpus", type=int, default=1, help="devices the grid is spread over (divides the total)")
    est.add_argument("--calibration", help="a saved calibration (JSON) of another device, e.g. a GPU's")
    est.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="artifact store: cached artifacts cost nothing, "
                                                                     "and the device's calibration is kept there")
    est.add_argument("--ignore-cache", action="store_true", help="estimate the whole grid, as on an empty store")
    est.add_argument("--top", type=int, default=10, help="how many of the most expensive stages to list")
    est.set_defaults(fn=cmd_estimate)

    enc = sub.add_parser("encoders", help="pre-train an SSL encoder, or list the cached ones")
    enc_sub = enc.add_subparsers(dest="encoders_command", required=True)
    pre = enc_sub.add_parser("pretrain", help="pre-train one encoder (cached: a second call is a hit)")
    pre.add_argument("--method", required=True, help="SSL method (`daebench list ssl`)")
    pre.add_argument("--dataset", required=True, help="registered dataset name or a source like npz:path/to/file.npz")
    pre.add_argument("--profile", default="tiny", help="tiny (narrow ResNet, CPU) or paper (solo-learn's config)")
    pre.add_argument("--width", type=int, default=None, help="ResNet18 width (default: 16 for tiny, 64 for paper)")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe parameter (YAML value), e.g. --set epochs=5 --set amp=true")
    pre.add_argument("--device", default="auto")
    pre.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="artifact store (default %(default)s)")
    els = enc_sub.add_parser("list", help="cached encoders with their kNN accuracy")
    els.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="artifact store (default %(default)s)")
    enc.set_defaults(fn=cmd_encoders)
    lst = sub.add_parser("list", help="list registered plugins")
    lst.add_argument("kind", nargs="?", choices=LISTABLE)
    lst.set_defaults(fn=cmd_list)

    val = sub.add_parser("validate", help="validate a grid config without running it")
    val.add_argument("config")
    val.add_argument("--only", action="append", metavar="KEY=V[,V...]", help="run a slice of the grid: keys attack, "
                     "defense, encoder, D_d, D_f, eps, seed, scenario; repeatable (e.g. --only attack=embedattack "
                     "--only defense=zepad,none)")
    val.add_argument("--plan", action="store_true", help="also expand the stage DAG (reads dataset files to hash them)")
    val.set_defaults(fn=cmd_validate)

    res = sub.add_parser("results", help="print the BA/RA/ASR table of a run")
    res.add_argument("run", help="run name (the grid's name) or a run directory")
    res.add_argument("--runs-dir", default=str(DEFAULT_RUNS))
    res.set_defaults(fn=cmd_results)

    def context_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run name (the grid's name) or a run directory")
        p.add_argument("--runs-dir", default=str(DEFAULT_RUNS))
        p.add_argument("--out", help="output directory (default results/reports/RUN/...)")
        p.add_argument("--defense", help="the defense compared with the baseline (default: zepad, else the best mean RA)")
        p.add_argument("--attack", help="the attack of single-attack tables (default: advencoder, else the grid's first)")
        p.add_argument("--eps", help="the perturbation budget, e.g. 10/255 (default: 10/255, else the smallest)")
        p.add_argument("--downstream", help="D_d of single-setting tables and plots (default: the run's first)")
        p.add_argument("--sweep", help="the defense parameter Table S5 sweeps, e.g. lam or aux_methods "
                                       "(default: the one parameter the defense's variants differ in)")
        p.add_argument("--pretrain", help="D_p of the victims tables without a D_p level show, where the run "
                                          "has several (default: cifar10 when there)")

    tab = sub.add_parser("tables", help="write the paper's tables (markdown, LaTeX, CSV) from a run")
    context_options(tab)
    tab.add_argument("--table", action="append", help="only this table (repeatable): 1-7, S1-S5")
    tab.add_argument("--paper", action="store_true", help="add the paper-reported numbers beneath, labelled")
    tab.set_defaults(fn=cmd_tables)

    plo = sub.add_parser("plots", help="draw the paper's figures (PNG + PDF) from a run")
    context_options(plo)
    plo.add_argument("--plot", action="append", help="only this plot (repeatable)")
    plo.add_argument("--encoder", help="only this victim encoder (default: every one, a panel each)")
    plo.set_defaults(fn=cmd_plots)

    lead = sub.add_parser("leaderboard", help="rebuild the generated section of leaderboard.md")
    lead.add_argument("runs", nargs="*", help="records (directories such as results/measured/RECORD) or run names "
                      "to rank (default: those the file's start marker names)")
    lead.add_argument("--file", default="leaderboard.md")
    lead.add_argument("--runs-dir", default=str(DEFAULT_RUNS))
    lead.add_argument("--check", action="store_true", help="exit 1 if the file is stale; write nothing")
    lead.add_argument("--reproduce", metavar="RUN", help="also exit 1 unless RUN (e.g. a fresh `ci` run) equals the "
                      "ranked record of the same grid")
    lead.set_defaults(fn=cmd_leaderboard)

    rec = sub.add_parser("records", help="rebuild the index of committed records in results/README.md")
    rec.add_argument("--file", default="results/README.md")
    rec.add_argument("--measured", default="results/measured", help="the directory of records")
    rec.add_argument("--check", action="store_true", help="exit 1 if the index is stale; write nothing")
    rec.set_defaults(fn=cmd_records)

    pro = sub.add_parser("probe", help="measure this device: ceiling, stages, a grid end to end, estimates (one JSON)")
    pro.add_argument("--out", default="probe.json", help="the JSON written (default %(default)s)")
    pro.add_argument("--device", help="cpu, cuda, cuda:1 (default: auto)")
    pro.add_argument("--width", type=int, help="ResNet18 width of the ceiling and the stages (default 64)")
    pro.add_argument("--image-sizes", type=int, nargs="+", help="ceiling image sizes (default 32 64)")
    pro.add_argument("--batches", type=int, nargs="+", help="ceiling batch sizes (default 256 512)")
    pro.add_argument("--seconds", type=float, help="timing window of each ceiling measurement (default 2)")
    pro.add_argument("--data", help="the stages' data source (default imagefolder:probe-data/cifar10-jpeg; digits if absent)")
    pro.add_argument("--stage-image-size", type=int, help="image size of the stage measurements (default 64)")
    pro.add_argument("--stage-images", type=int, help="images per stage measurement (default 4096)")
    pro.add_argument("--grid", help="the end-to-end grid (default: the bundled probe grid)")
    pro.add_argument("--executor", choices=["dask", "joblib"], help="how the grid runs (default dask)")
    pro.add_argument("--sharing-workers", type=int, help="workers per device in the sharing run (default 4; 0 skips it)")
    pro.add_argument("--cpu-record", help="the grid's CPU record to compare with (a results/measured/ directory)")
    pro.add_argument("--estimate-grids", nargs="+", help="grids estimated from this device's calibration (default paper)")
    pro.add_argument("--estimate-gpus", type=int, nargs="+", help="device counts of those estimates (default 1 8)")
    pro.add_argument("--work-dir", help="stores and calibration of the probe (default probe-work)")
    pro.set_defaults(fn=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The one error boundary of the command line: a `DAEBenchError` is printed as its
    paragraph; anything else as one paragraph naming the command, its input and where the
    traceback went (the log file, and the terminal under --debug). Exit codes: 2 for a
    user error, 3 for an internal one, 130 when interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except DAEBenchError as err:
        message = str(err).rstrip()
        if message.endswith("..") and not message.endswith("..."):  # a sentence that ended in a period, plus ours
            message = message[:-1]
        print(f"error: {message if message.endswith(('.', '?', '!', ')')) else message + '.'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every completed artifact is kept; re-run to resume.", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, or an environment DAEBench did not foresee
        import traceback

        log = _write_error_log(argv, traceback.format_exc())
        what = " ".join(argv) or args.command
        print(f"error: `daebench {what}` failed with an internal error ({type(err).__name__}: {err}). This is not "
              f"something the input was checked for: please report it with the traceback, which is in {log}"
              f"{' and below' if debug else ' (or re-run with --debug to print it)'}. Every artifact computed before "
              f"the failure is kept in the store.", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3


def _write_error_log(argv: list[str], text: str) -> Path:
    """The traceback of an internal error, kept where a user can attach it to a report."""
    import os
    import tempfile
    import time

    from daebench.paths import default_runs

    chosen = os.environ.get("DAEBENCH_ERROR_LOG")  # where the tests keep theirs
    candidates = [Path(chosen)] if chosen else [default_runs() / "daebench-error.log",
                                                Path(tempfile.gettempdir()) / "daebench-error.log"]
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} daebench {' '.join(argv)}\n{text}\n")
            return path
        except OSError:
            continue
    return Path("(no writable location for the log)")


if __name__ == "__main__":
    sys.exit(main())

"""Bad input, as a hostile user gives it: each case of the bad-input issue gets one clear
paragraph (exit 2), never a traceback, a silent wrong result or a lost results table; and
fuzzed command lines and dataset files keep to that."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daebench.cli import main
from tests.conftest import MICRO_GRID, write_grid


def _npz(path, n_train=40, n_test=20, classes=4, **changes):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
              "y_train": np.arange(n_train) % classes,
              "x_test": rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
              "y_test": np.arange(n_test) % classes}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _npz_grid(tmp_path, npz):
    return write_grid(tmp_path / "grid.yaml", datasets={"mine": f"npz:{npz}"}, downstream=["mine"],
                      image_size=8)


def _one_paragraph(err: str) -> str:
    assert "Traceback" not in err and err.startswith("error: "), err
    assert err.strip().count("\n") == 0, err
    assert not err.rstrip().endswith(".."), err
    return err


@pytest.mark.parametrize("flag", [["--workers", "0"], ["--workers", "-2"], ["--workers-per-gpu", "0"]])
def test_workers_below_one_is_a_clear_error(capsys, micro_grid_path, tmp_path, flag):
    code = main(["run", str(micro_grid_path), *flag, "--cache-dir", str(tmp_path / "c"), "--no-estimate"])
    assert code == 2
    assert "at least 1" in _one_paragraph(capsys.readouterr().err)
    assert not (tmp_path / "c").exists()  # rejected before anything ran


@pytest.mark.parametrize("table", ["no_metric_columns", "zero_rows", "empty_file", "garbage"])
@pytest.mark.parametrize("command", ["tables", "results", "plots"])
def test_reports_of_a_table_without_results_are_a_clear_error(capsys, tmp_path, command, table):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    content = {"no_metric_columns": "defense,attack\nnone,noise\n", "zero_rows": "defense,attack,D_d,eps,BA,RA,ASR\n",
               "empty_file": "", "garbage": "\x00\x01binary,,\n\"unclosed"}[table]
    (run / "results.csv").write_text(content)
    argv = [command, "r", "--runs-dir", str(tmp_path / "runs")] + (["--out", str(tmp_path / "o")] if command != "results" else [])
    assert main(argv) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "results table" in err and "results.csv" in err


@pytest.mark.parametrize("case, expected", [
    ("missing_y_test", "lacks the arrays y_test"),
    ("empty_test", "the test split is empty"),
    ("float_images", "x_train is float"),
    ("label_1000", "never occur"),
    ("test_label_beyond", "y_test has label 9"),
    ("labels_wrong_length", "y_train is"),
    ("not_an_npz", "cannot be read as .npz"),
])
def test_validate_checks_every_npz_before_anything_runs(capsys, tmp_path, case, expected):
    path = tmp_path / "data.npz"
    if case == "not_an_npz":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    else:
        change = {"missing_y_test": {"y_test": None}, "empty_test": {"x_test": np.zeros((0, 8, 8, 3), np.uint8),
                                                                     "y_test": np.zeros(0, np.int64)},
                  "float_images": {"x_train": np.zeros((40, 8, 8, 3), np.float32)},
                  "label_1000": {"y_train": np.where(np.arange(40) == 0, 1000, np.arange(40) % 4)},
                  "test_label_beyond": {"y_test": np.full(20, 9)},
                  "labels_wrong_length": {"y_train": np.zeros(7, np.int64)}}[case]
        _npz(path, **change)
    grid = _npz_grid(tmp_path, path)
    for argv in (["validate", str(grid)], ["validate", str(grid), "--plan"],
                 ["run", str(grid), "--cache-dir", str(tmp_path / "cache"), "--no-estimate"]):
        assert main(argv) == 2, argv
        assert expected in _one_paragraph(capsys.readouterr().err), argv
    assert not (tmp_path / "cache").exists()  # nothing computed, nothing to lose


def test_a_valid_npz_still_validates(capsys, tmp_path):
    assert main(["validate", str(_npz_grid(tmp_path, _npz(tmp_path / "ok.npz"))), "--plan"]) == 0


def test_cuda_on_a_machine_without_it_is_refused_once_before_anything_runs(capsys, micro_grid_path, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cache = tmp_path / "cache"
    assert main(["run", str(micro_grid_path), "--device", "cuda", "--cache-dir", str(cache), "--no-estimate"]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "no CUDA device" in err and err.count("CUDA") <= 3
    assert not cache.exists()
    assert main(["run", str(micro_grid_path), "--device", "tpu", "--cache-dir", str(cache), "--no-estimate"]) == 2
    assert "valid devices are auto, cpu, cuda" in capsys.readouterr().err


def test_a_cache_dir_that_is_a_file_is_named_as_such(capsys, micro_grid_path, tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    assert main(["run", str(micro_grid_path), "--cache-dir", str(target), "--no-estimate"]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "is a file, not a directory" in err and "computed and kept" not in err
    assert target.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_store_is_one_message(capsys, micro_grid_path, tmp_path):  # pragma: no cover - CI runs as root
    store = tmp_path / "ro"
    store.mkdir()
    store.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert main(["run", str(micro_grid_path), "--cache-dir", str(store), "--no-estimate"]) == 2
    assert "not writable" in _one_paragraph(capsys.readouterr().err)


def test_a_read_only_store_is_one_message_as_root_too(capsys, micro_grid_path, tmp_path, monkeypatch):
    """Root ignores permission bits, so the write failure is injected where the store probes."""
    from pathlib import Path

    real = Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".write-test-"):
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", refuse)
    assert main(["run", str(micro_grid_path), "--cache-dir", str(tmp_path / "ro"), "--no-estimate"]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "is not writable (Read-only file system)" in err


def test_a_nan_checkpoint_is_refused(capsys, tmp_path):
    import torch

    from daebench.encoders import build_encoder

    weights = build_encoder("resnet18", width=8).backbone.state_dict()
    weights["conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"state_dict": weights}, path)
    grid = write_grid(tmp_path / "g.yaml", encoders=[{"checkpoint": str(path), "arch": "resnet18", "width": 8}])
    assert main(["run", str(grid), "--cache-dir", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r"),
                 "--no-estimate", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite values" in err and "conv1.weight" in err


def test_a_diverged_encoder_is_never_stored(tmp_path, monkeypatch):
    import torch

    from daebench.config import parse_grid
    from daebench.results import run_grid
    from daebench import stages

    real = stages.STAGES["pretrain"]

    def diverged(ctx, spec, inputs):
        tensors, meta = real(ctx, spec, inputs)
        first = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[first] = torch.full_like(tensors[first], float("inf"))
        return tensors, meta

    monkeypatch.setitem(stages.STAGES, "pretrain", diverged)
    report = run_grid(parse_grid(MICRO_GRID), cache_dir=tmp_path / "c", runs_dir=None, progress=False,
                      raise_on_failure=False)
    assert any("NaN or infinite weights" in f.error for f in report.failures)
    assert not list((tmp_path / "c").glob("pretrain/*/*/meta.json"))


def test_a_failed_run_never_destroys_an_earlier_runs_results(tmp_path, micro_run, monkeypatch):
    from daebench.config import parse_grid
    from daebench.results import load_run, run_grid

    root, grid, _ = micro_run
    runs = tmp_path / "runs"
    run_grid(grid, cache_dir=root / "cache", runs_dir=runs, progress=False)
    before = (runs / "micro" / "results.csv").read_text()
    # the same name, another grid, every stage failing: a 0-row table must not replace the 4-row one
    broken = parse_grid({**MICRO_GRID, "encoders": [{**MICRO_GRID["encoders"][0], "params": {"epochs": 3}}]})
    from daebench import stages

    def boom(ctx, spec, inputs):
        raise RuntimeError("injected")

    monkeypatch.setitem(stages.STAGES, "pretrain", boom)
    run_grid(broken, cache_dir=tmp_path / "c2", runs_dir=runs, progress=False, raise_on_failure=False)
    history = list((runs / "micro" / "history").iterdir())
    assert len(history) == 1 and (history[0] / "results.csv").read_text() == before
    from daebench.errors import DAEBenchError

    with pytest.raises(DAEBenchError, match="has no rows"):  # the current table is empty: reports refuse it
        load_run("micro", runs)
    import json

    record = json.loads((runs / "micro" / "run.json").read_text())
    assert record["rows"] == 0 and record["history"][-1]["rows"] == 4


def test_a_rerun_that_computes_nothing_keeps_the_record_of_the_run_that_computed(tmp_path, micro_run):
    import json

    from daebench.results import run_grid

    root, grid, _ = micro_run
    runs = tmp_path / "runs"
    run_grid(grid, cache_dir=root / "cache", runs_dir=runs, progress=False)
    run_grid(grid, cache_dir=root / "cache", runs_dir=runs, progress=False)
    record = json.loads((runs / "micro" / "run.json").read_text())
    assert len(record["history"]) == 1 and record["history"][0]["rows"] == record["rows"] == 4


def test_disk_full_while_writing_leaves_nothing_partial(tmp_path, monkeypatch):
    import torch

    from daebench import store as store_module
    from daebench.errors import StoreError
    from daebench.store import ArtifactStore

    store = ArtifactStore(tmp_path / "s")

    def full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "save_file", full)
    with pytest.raises(StoreError, match="is full"):
        store.save("features", "ab" * 32, {"x": torch.zeros(3)}, {})
    assert not store.exists("features", "ab" * 32)
    assert not any(p.is_file() for p in (tmp_path / "s").rglob("*") if "lock" not in p.name)


def test_an_unknown_key_gets_a_did_you_mean(capsys, tmp_path):
    grid = write_grid(tmp_path / "g.yaml", atacks=["noise"])
    assert main(["validate", str(grid)]) == 2
    err = _one_paragraph(capsys.readouterr().err)
    assert "atacks: unknown key; did you mean 'attacks'?" in err


def test_an_internal_error_is_one_paragraph_with_the_traceback_in_a_log(capsys, tmp_path, monkeypatch):
    from daebench import cli

    monkeypatch.setenv("DAEBENCH_ERROR_LOG", str(tmp_path / "runs" / "daebench-error.log"))

    def bug(args):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(cli, "cmd_list", bug)
    assert cli.main(["list"]) == 3
    err = _one_paragraph(capsys.readouterr().err)
    assert "`daebench list` failed with an internal error (ZeroDivisionError: deliberate)" in err
    log = tmp_path / "runs" / "daebench-error.log"
    assert "Traceback" in log.read_text() and "--debug" in err
    assert cli.main(["--debug", "list"]) == 3
    assert "Traceback" in capsys.readouterr().err


# -- fuzzing ---------------------------------------------------------------------------------------
_SUBCOMMANDS = ["run", "list", "validate", "estimate", "results", "tables", "plots", "leaderboard", "encoders", "probe"]
_TOKENS = st.sampled_from(["--workers", "-1", "0", "x", "--device", "cuda:9", "--cache-dir", "/dev/null",
                           "--runs-dir", "--eps", "10/0", "nan", "--table", "99", "--plot", "nope", "--gpus",
                           "--top", "--set", "=", "--method", "--dataset", "npz:/nope.npz", "--width", "-3",
                           "--out", "--stage-images", "--calibration", "/etc/passwd", "--check", "ghost-run", ""])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(_SUBCOMMANDS), rest=st.lists(_TOKENS, max_size=5))
def test_fuzzed_command_lines_never_give_a_traceback_or_touch_existing_files(command, rest, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAEBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DAEBENCH_RUNS", str(tmp_path / "runs"))
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    argv = [command, *rest]
    if command in ("run", "probe") and "--help" not in argv:
        argv = [command, "/does/not/exist.yaml"] if command == "run" else [command, "--stage-images", "1"]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors: exit 2 with its own one-line message
        code = exit_.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "Traceback" not in out.out, argv
    assert code != 3, (argv, out.err)  # no internal error
    assert keep.read_text() == "precious"
    assert all(p.exists() for p in before), argv


_ARRAYS = st.fixed_dictionaries({
    "n_train": st.integers(0, 6), "n_test": st.integers(0, 4), "h": st.sampled_from([0, 1, 4]),
    "channels": st.sampled_from([1, 3, 4]), "dtype": st.sampled_from(["uint8", "float32", "int64"]),
    "label_max": st.sampled_from([0, 2, 9, 1000]), "drop": st.sampled_from([None, "x_test", "y_train"]),
    "nan": st.booleans(),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=_ARRAYS)
def test_fuzzed_npz_files_are_rejected_clearly_or_load(spec, tmp_path):
    from daebench.data import load_dataset, npz_problem
    from daebench.errors import DAEBenchError

    rng = np.random.default_rng(0)

    def images(n):
        x = rng.integers(0, 256, (n, spec["h"], spec["h"], spec["channels"])).astype(spec["dtype"])
        if spec["nan"] and spec["dtype"] == "float32" and x.size:
            x.flat[0] = np.nan
        return x

    arrays = {"x_train": images(spec["n_train"]), "y_train": rng.integers(0, spec["label_max"] + 1, spec["n_train"]),
              "x_test": images(spec["n_test"]), "y_test": rng.integers(0, spec["label_max"] + 1, spec["n_test"])}
    arrays.pop(spec["drop"], None)
    path = tmp_path / f"f{abs(hash(str(spec)))}.npz"
    np.savez(path, **arrays)
    problem = npz_problem(path)
    try:
        data = load_dataset(f"npz:{path}", image_size=8)
    except DAEBenchError as err:
        assert problem is not None and "Traceback" not in str(err)
        return
    # it loaded: then it is a dataset a grid can use
    assert problem is None
    assert len(data.y_train) and len(data.y_test)
    assert int(data.y_train.max()) < data.num_classes and int(data.y_test.max()) < data.num_classes
    assert len(set(data.y_train.tolist())) == data.num_classes


@pytest.mark.parametrize("damage", ["empty_class", "non_image_file", "corrupt_jpeg"])
def test_damaged_imagefolder_trees_are_a_clear_error(capsys, tmp_path, damage):
    from PIL import Image

    root = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / cls / f"{i}.jpg")
    if damage == "empty_class":
        for f in (root / "train" / "b").iterdir():
            f.unlink()
    elif damage == "non_image_file":
        (root / "train" / "a" / "notes.txt").write_text("not an image")
    else:
        (root / "test" / "a" / "0.jpg").write_bytes(b"\xff\xd8\xff garbage")
    grid = write_grid(tmp_path / "g.yaml", datasets={"tree": f"imagefolder:{root}"}, downstream=["tree"], image_size=8)
    code = main(["validate", str(grid), "--plan"])
    err = capsys.readouterr().err
    if damage == "non_image_file" and code == 0:
        return  # torchvision's ImageFolder skips files without an image extension: a valid tree
    assert code == 2, err
    _one_paragraph(err)

"""The device probe at a small setting on CPU: every step runs and writes its figures, so the
GPU probe cannot rot between the tasks that have a GPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from daebench.cli import main
from daebench.config import parse_grid
from daebench.results import run_grid
from tests.conftest import write_grid


@pytest.fixture(scope="module")
def probe_json(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    grid = write_grid(root / "micro.yaml")
    # The grid's CPU record, as results/measured/ keeps one: the probe compares with it.
    record = root / "record"
    import yaml

    run_grid(parse_grid(yaml.safe_load(grid.read_text())), cache_dir=root / "record-cache", runs_dir=root / "runs",
             progress=False)
    record.mkdir()
    (record / "results.csv").write_text((root / "runs" / "micro" / "results.csv").read_text())
    out = root / "probe.json"
    code = main(["probe", "--device", "cpu", "--out", str(out), "--width", "8", "--image-sizes", "16",
                 "--batches", "32", "--seconds", "0.05", "--data", "digits", "--stage-image-size", "16",
                 "--stage-images", "64", "--grid", str(grid), "--executor", "joblib", "--sharing-workers", "2",
                 "--cpu-record", str(record), "--estimate-grids", "quick", "--estimate-gpus", "1", "8",
                 "--work-dir", str(root / "work")])
    assert code == 0
    return json.loads(out.read_text())


def test_the_ceiling_is_measured_for_each_size_and_batch(probe_json):
    (row,) = probe_json["ceiling"]
    assert row["image_size"] == 16 and row["batch"] == 32 and row["precision"] == "float32"
    assert row["train_images_per_s"] > 0 and row["forward_images_per_s"] > row["train_images_per_s"]


def test_every_stage_type_reports_throughput_and_its_share_of_the_ceiling(probe_json):
    stages = {row["stage"]: row for row in probe_json["stages"]}
    assert set(stages) == {"pretrain", "craft", "defend", "features"}
    for row in stages.values():
        assert row["images"] == 64 and row["images_per_s"] > 0
        # a share, not a guess: the plugin's counted passes at ceiling speed over the measured time
        assert 0 < row["share_of_ceiling"] < 5, row
    assert stages["pretrain"]["encoder_passes"]["train"] == 2 * 64  # two views per image, one epoch


def test_the_grid_runs_twice_and_the_two_layouts_are_compared(probe_json):
    grid = probe_json["grid"]
    one, shared = grid["one_worker_per_device"], grid["shared_device"]
    assert one["cells"] == shared["cells"] == 4 and not one["failures"] and not shared["failures"]
    assert shared["workers_per_device"] == 2 and grid["sharing_speedup"] > 0
    # On a CPU the two layouts run torch with 2 and with 1 thread(s) per stage, whose float
    # sums differ, so the numbers may differ too; on a GPU both run one thread per worker.
    agree = grid["layouts_agree"]
    assert agree["cells_compared"] == 4
    for metric in ("BA", "RA"):
        assert 0 <= agree[metric]["max_abs_points"] <= 100 and agree[metric]["identical_cells"] <= 4


def test_the_cpu_record_comparison_reads_the_record(probe_json):
    versus = probe_json["versus_cpu"]
    assert versus["cells_compared"] == 4
    assert versus["BA"]["max_abs_points"] == 0.0 and versus["RA"]["identical_cells"] == 4


def test_estimates_come_from_the_probes_own_calibration(probe_json, tmp_path):
    by_devices = {e["devices"]: e for e in probe_json["estimates"] if "devices" in e}
    assert by_devices[8]["total_seconds"] == pytest.approx(by_devices[1]["total_seconds"] / 8, rel=1e-3)
    (calibration,) = [e for e in probe_json["estimates"] if "calibration_file" in e]
    assert calibration["calibration"]["device"] == "cpu" and calibration["calibration"]["configs"]
    assert set(probe_json["seconds"]) == {"ceiling", "stages", "grid", "versus_cpu", "estimates"}


def test_bad_probe_settings_get_one_clear_error(capsys):
    assert main(["probe", "--stage-images", "1", "--out", "/dev/null"]) == 2
    assert "at least 2 stage images" in capsys.readouterr().err


def test_results_table_has_what_the_probe_compares(probe_json):
    rows = pd.DataFrame(probe_json["grid"]["one_worker_per_device"]["results"])
    assert {"defense", "attack", "BA", "RA", "ASR"} <= set(rows.columns)

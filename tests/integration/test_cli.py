"""The CLI: clear one-paragraph errors (exit 2), never a traceback; tables on success."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from daebench.cli import main
from tests.conftest import write_grid


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys):
    code, out, _ = _run(capsys, "list", "attacks")
    assert code == 0 and "embedattack" in out and "uapgd" in out
    code, out, _ = _run(capsys, "list")
    assert code == 0 and all(k in out for k in ("attacks:", "defenses:", "encoders:", "datasets:", "ssl:"))


def test_list_keeps_one_set_of_columns_for_every_kind(capsys):
    code, out, _ = _run(capsys, "list")
    header = out.splitlines()[0]
    desc_at = header.index("description")
    rows = [line for line in out.splitlines()[1:] if line.startswith("  ") and line[2] != " " and len(line) > desc_at]
    assert len(rows) > 25  # every plugin with a docstring (SSL recipes have none)
    for line in rows:  # every row's description starts in the header's column, however long its name
        assert line[desc_at - 1] == " " and line[desc_at] != " ", line
    continuation = [line for line in out.splitlines() if line.startswith(" " * desc_at)]
    assert all(line[desc_at] != " " for line in continuation)


def test_run_logs_one_line_per_stage_when_its_output_is_not_a_terminal(capsys, caplog, tmp_path):
    import logging

    caplog.set_level(logging.INFO, logger="daebench")
    grid = write_grid(tmp_path / "g.yaml", attacks=["noise"], defenses=["none"])
    code, _, err = _run(capsys, "run", str(grid), "--cache-dir", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r"),
                        "--no-estimate")
    assert code == 0
    assert "\r" not in err and "it/s" not in err  # no progress bars in a log
    done = [r.getMessage() for r in caplog.records if "done:" in r.getMessage()]
    assert done and done[0].startswith("[1/") and any("eps=10/255" in m for m in done)  # eps as written


def test_validate_bundled(capsys):
    code, out, _ = _run(capsys, "validate", "quick", "--plan")
    assert code == 0 and "valid grid 'quick'" in out and "unique stages" in out
    stages = dict(part.rsplit(" ", 1) for part in out.split("stages: ")[1].strip().split(", "))
    assert list(stages) == ["pretrain", "craft", "defend", "features", "head", "evaluate"]
    assert sum(map(int, stages.values())) == int(out.split(" unique stages")[0].rsplit(" ", 1)[1])


@pytest.mark.parametrize("override, expected", [
    ({"attacks": ["uapdg"]}, "Did you mean 'uapgd'"),
    ({"eps": [2]}, "outside (0, 1]"),
    ({"defenses": ["none", {"name": "pgd_at", "params": {"lr": 1}}]}, "lr: unknown parameter"),
    ({"downstream": ["digitz"]}, "Did you mean 'digits'"),
])
def test_bad_configs_give_one_clean_paragraph(capsys, tmp_path, override, expected):
    config = write_grid(tmp_path / "bad.yaml", **override)
    code, out, err = _run(capsys, "run", str(config), "--cache-dir", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r"))
    assert code == 2
    assert expected in err and "Traceback" not in err
    assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "c").exists()  # validation happens before anything runs


def test_malformed_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    code, _, err = _run(capsys, "validate", str(bad))
    assert code == 2 and "not valid YAML at line" in err


def test_results_of_unknown_run(capsys, tmp_path):
    code, _, err = _run(capsys, "results", "nope", "--runs-dir", str(tmp_path))
    assert code == 2 and "No results for run 'nope'" in err


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_is_refused_and_nothing_runs_its_code(capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Payload(marker)}, evil)
    config = write_grid(tmp_path / "g.yaml", encoders=[{"checkpoint": str(evil), "arch": "resnet18", "width": 8}],
                        attacks=[{"name": "uapgd", "params": {"steps": 1}}], defenses=["none"])
    code, _, err = _run(capsys, "run", str(config), "--cache-dir", str(tmp_path / "c"),
                        "--runs-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 1
    assert "code" in err and "exec" in err and "Traceback" not in err
    assert not marker.exists()


def test_real_checkpoint_as_a_victim(capsys, tmp_path):
    """A third-party checkpoint (akamaster ResNet-20) loads as a grid encoder and is attacked."""
    from tests.conftest import shared_file

    weights = shared_file("weights/resnet20-12fca82f.th")
    config = write_grid(tmp_path / "g.yaml", image_size=32,
                        encoders=[{"checkpoint": str(weights), "arch": "resnet20", "width": 16,
                                   "conv1_padding": 1, "normalization": "imagenet"}],
                        attacks=[{"name": "uapgd", "params": {"steps": 2}}], defenses=["none"])
    code, out, err = _run(capsys, "run", str(config), "--cache-dir", str(tmp_path / "c"),
                          "--runs-dir", str(tmp_path / "r"), "--no-progress")
    assert code == 0, err
    assert "resnet20-12fca82f" in out


def test_encoders_pretrain_is_cached_and_listed(capsys, tmp_path):
    cache = str(tmp_path / "cache")
    argv = ["encoders", "pretrain", "--method", "nnclr", "--dataset", "digits", "--width", "4",
            "--set", "epochs=1", "--set", "queue_size=256", "--cache-dir", cache]
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and out.startswith("trained: nnclr-digits") and "random init" in out
    code, again, _ = _run(capsys, *argv)
    assert code == 0 and again.startswith("cache hit: nnclr-digits")
    assert out.split("(key ")[1][:12] == again.split("(key ")[1][:12]
    code, listing, _ = _run(capsys, "encoders", "list", "--cache-dir", cache)
    assert code == 0 and "nnclr" in listing and "random_init_knn" in listing


@pytest.mark.parametrize("argv, expected", [
    (["--method", "nnclrr"], "Did you mean 'nnclr'"),
    (["--method", "nnclr", "--set", "epochs"], "--set expects KEY=VALUE"),
    (["--method", "nnclr", "--set", "queue=5"], "queue: unknown parameter"),
])
def test_encoders_pretrain_rejects_bad_input(capsys, tmp_path, argv, expected):
    code, out, err = _run(capsys, "encoders", "pretrain", "--dataset", "digits", *argv, "--cache-dir", str(tmp_path))
    assert code == 2 and expected in err and "Traceback" not in err


def test_run_keeps_each_computed_stage_s_estimate_beside_its_actual_seconds(capsys, tmp_path):
    import json

    import pandas as pd

    grid = write_grid(tmp_path / "g.yaml", attacks=["noise"], defenses=["none"])
    args = ("run", str(grid), "--cache-dir", str(tmp_path / "c"), "--runs-dir", str(tmp_path / "r"), "--no-progress")
    code, out, _ = _run(capsys, *args)
    assert code == 0 and "PFLOP" in out  # the estimate printed first
    run_dir = tmp_path / "r" / "micro"
    info = json.loads((run_dir / "run.json").read_text())
    stages = pd.read_csv(run_dir / "stages.csv")
    assert info["stages_file"] == "stages.csv" and "stages" not in info["estimate"]
    assert len(stages) == sum(info["computed"].values())
    assert stages["stage"].value_counts().to_dict() == info["computed"]
    assert stages["actual_seconds"].sum() == pytest.approx(sum(info["stage_seconds"].values()), abs=0.05)
    pretrain = stages[stages["stage"] == "pretrain"].iloc[0]
    assert pretrain["estimated_seconds"] > 0 and pretrain["actual_seconds"] > 0
    assert stages.groupby("stage")["estimated_seconds"].sum().to_dict() == pytest.approx(
        {k: v for k, v in info["estimate"]["stage_seconds"].items() if k in info["computed"]}, abs=0.1)  # run.json: 0.1 s
    # a re-run that computes nothing keeps the table of the run that did
    code, _, _ = _run(capsys, *args)
    assert code == 0 and pd.read_csv(run_dir / "stages.csv").equals(stages)
    assert json.loads((run_dir / "run.json").read_text())["stages_file"] == "stages.csv"

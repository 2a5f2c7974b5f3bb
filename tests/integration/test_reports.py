"""Reports end to end on the micro grid's run: the tidy store, tables, plots, the leaderboard."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from daebench.cli import main
from daebench.results import PROVENANCE, TIMINGS, load_run


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tidy_store_has_metrics_timings_and_provenance_in_csv_and_parquet(micro_run):
    root, _, report = micro_run
    run_dir = root / "runs" / "micro"
    csv, parquet = pd.read_csv(run_dir / "results.csv"), pd.read_parquet(run_dir / "results.parquet")
    assert len(csv) == len(parquet) == len(report.results) == 4
    for col in ["method", "D_p", "defense", "D_f", "D_d", "attack", "scenario", "eps", "seed", "BA", "BA_lo", "BA_hi",
                "RA", "ASR", "n", "defense_name", "defense_params", *TIMINGS, *PROVENANCE]:
        assert col in parquet, col
    assert (parquet.craft_seconds > 0).all() and (parquet.pretrain_seconds > 0).all()
    assert parquet.grid_hash.nunique() == 1 and parquet.torch.iloc[0] == torch.__version__
    pd.testing.assert_series_equal(csv.RA, parquet.RA)
    pgd = parquet[parquet.defense == "pgd_at"].defense_params.iloc[0]
    assert '"epochs":1' in pgd  # the resolved parameters travel with the row


def test_tables_cli_writes_every_format(micro_run, capsys, tmp_path):
    root, _, _ = micro_run
    code, out, _ = _cli(capsys, "tables", "micro", "--runs-dir", str(root / "runs"), "--out", str(tmp_path), "--paper")
    assert code == 0, out
    for name in ("1", "2", "7", "S4"):
        assert (tmp_path / f"table{name}.md").is_file() and (tmp_path / f"table{name}.tex").is_file()
    table2 = (tmp_path / "table2.md").read_text()
    assert "measured" in table2 and "paper-reported" in table2 and "pgd_at" in table2
    frame = pd.read_csv(tmp_path / "table2.csv")
    assert set(frame.source) == {"measured", "paper-reported"}


def test_plots_cli_draws_what_the_run_covers_and_says_why_not_the_rest(micro_run, capsys, tmp_path):
    root, _, _ = micro_run
    code, out, _ = _cli(capsys, "plots", "micro", "--runs-dir", str(root / "runs"), "--out", str(tmp_path))
    assert code == 0
    for name in ("confidence", "bars", "heatmap", "tsne"):
        png = tmp_path / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert (tmp_path / f"{name}.pdf").is_file()
    assert "skipped eps_sweep: the run has a single eps" in out
    assert not (tmp_path / "eps_sweep.png").exists()


def test_leaderboard_rewrites_only_its_section_and_check_detects_staleness(micro_run, capsys, tmp_path):
    root, _, report = micro_run
    board = tmp_path / "leaderboard.md"
    board.write_text("# hand-written intro\n\n<!-- daebench:leaderboard:start runs=micro -->\nold\n"
                     "<!-- daebench:leaderboard:end -->\n\nhand-written footer\n")
    runs = ["--runs-dir", str(root / "runs"), "--file", str(board)]
    assert _cli(capsys, "leaderboard", "--check", *runs)[0] == 1  # stale: "old"
    assert _cli(capsys, "leaderboard", *runs)[0] == 0
    text = board.read_text()
    assert text.startswith("# hand-written intro") and text.endswith("hand-written footer\n")
    assert "old" not in text.split("start runs=micro")[1]
    code, out, _ = _cli(capsys, "leaderboard", "--check", *runs)
    assert code == 0 and "up to date" in out
    # ranked by mean RA: pgd_at above none on the micro grid, each with its mean RA shown
    res = report.results
    means = res.groupby("defense").RA.mean()
    defenses_table = text.split("Attacks, strongest first")[0]
    ranked = [line.split("|")[2].strip() for line in defenses_table.splitlines()
              if line.startswith("| ") and "rank" not in line]
    assert ranked == list(means.sort_values(ascending=False).index)
    assert f"{100 * means['none']:.1f}" in text
    board.write_text(text.replace(f"{100 * means['none']:.1f}", "99.9"))
    assert _cli(capsys, "leaderboard", "--check", *runs)[0] == 1


def test_leaderboard_without_markers_is_a_clear_error(capsys, tmp_path):
    board = tmp_path / "leaderboard.md"
    board.write_text("# no markers\n")
    code, _, err = _cli(capsys, "leaderboard", "--file", str(board), "--runs-dir", str(tmp_path))
    assert code == 2 and "daebench:leaderboard:start runs=" in err


def test_reports_of_an_unknown_run_or_table_are_clear_errors(micro_run, capsys):
    root, _, _ = micro_run
    code, _, err = _cli(capsys, "tables", "nope", "--runs-dir", str(root / "runs"))
    assert code == 2 and "No results for run 'nope'" in err and "micro" in err
    code, _, err = _cli(capsys, "tables", "micro", "--runs-dir", str(root / "runs"), "--table", "S9")
    assert code == 2 and "Unknown table 'S9'" in err
    code, _, err = _cli(capsys, "plots", "micro", "--runs-dir", str(root / "runs"), "--plot", "tnse")
    assert code == 2 and "Did you mean 'tsne'" in err


def test_detection_accuracy_is_reported_for_a_defense_with_a_detector(micro_run, monkeypatch):
    """Evaluate with a detector: accuracy over clean (should pass) and adversarial (should be flagged)."""
    from daebench.stages import STAGES, StageContext
    from daebench.store import ArtifactStore
    from daebench.defenses import DEFENSES

    root, _, report = micro_run
    store = ArtifactStore(root / "cache")
    key = report.results[report.results.defense == "none"].key.iloc[0]
    node = report.plan.nodes[key]
    inputs = {role: store.load(ref.stage, ref.key) for role, ref in node.refs.items()}
    # a detector flagging low confidence: score = 0.5 - confidence, flagged above 0 (no fusion: threshold 0)
    monkeypatch.setattr(DEFENSES.get("none"), "detection_score", staticmethod(lambda conf, fusion=None: 0.5 - conf[0]))
    tensors, out = STAGES["evaluate"](StageContext(), node.spec, inputs)
    low_clean = (tensors["confidence_clean_branch0"] < 0.5).float()
    low_adv = (tensors["confidence_adv_branch0"] < 0.5).float()
    expected = ((1 - low_clean).sum() + low_adv.sum()) / (2 * len(low_clean))
    m = out["metrics"]
    assert m["detection_accuracy"] == pytest.approx(float(expected))
    assert m["detection_accuracy_lo"] <= m["detection_accuracy"]
    # AUROC: the probability that an adversarial image scores above a clean one (ties count half)
    s_clean, s_adv = 0.5 - tensors["confidence_clean_branch0"], 0.5 - tensors["confidence_adv_branch0"]
    pairs = (s_adv[:, None] > s_clean[None, :]).float() + 0.5 * (s_adv[:, None] == s_clean[None, :]).float()
    assert m["detection_auroc"] == pytest.approx(float(pairs.mean()))
    assert m["detection_accuracy_oracle"] >= m["detection_accuracy"] - 1e-12  # the best threshold is at least as good
    assert m["detection_accuracy_at_0.00"] == pytest.approx(m["detection_accuracy"])  # the sweep, at this detector's 0
    assert m["detection_accuracy_oracle"] >= max(m[f"detection_accuracy_at_{t:.2f}"] for t in (0.0, 0.05, 0.1, 0.2, 0.3))
    assert out["metrics"]["BA"] == store.load_meta("evaluate", key)["metrics"]["BA"]  # detection changes nothing else


def test_load_run_reads_a_committed_record_without_parquet(tmp_path):
    (tmp_path / "results.csv").write_text("defense,attack,D_d,eps,BA,RA,ASR\nnone,x,d,0.04,0.6,0.5,0.2\n")
    run = load_run(tmp_path, tmp_path / "elsewhere")
    assert run.name == tmp_path.name and run.results.RA.iloc[0] == 0.5

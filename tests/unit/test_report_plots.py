"""Report figures: each one drawn from the two-encoder report fixture (tests/data/report_fixture.csv)
with a tiny synthetic artifact store behind it (made-up per-sample values that only exercise
the drawing), checked for its pixel size, 9 pt text, titles, axis labels, legends and one panel
per victim encoder."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.text import Text
from PIL import Image

from daebench.report.plots import PLOTS, PNG_DPI, NotCovered, draw, write_plots
from daebench.report.tables import TableContext
from daebench.results import RunRecord
from daebench.store import ArtifactStore

DATA = Path(__file__).resolve().parents[1] / "data"
N, CLASSES, DIM = 60, 10, 8
ENCODERS = ["simclr-cifar10", "byol-cifar10"]
ZEPAD_FUSION = {"method": "rfdm", "mpae": [0, 1], "bmp": 2, "threshold": 0.1}


def _synthetic_run(root: Path, results: pd.DataFrame) -> RunRecord:
    """The fixture's rows, each pointing at made-up evaluate / features artifacts in root/cache."""
    import daebench.store

    fsync, daebench.store._fsync = daebench.store._fsync, lambda path: None  # scratch files: no need to hit the disk
    try:
        return _write_synthetic_run(root, results)
    finally:
        daebench.store._fsync = fsync


def _write_synthetic_run(root: Path, results: pd.DataFrame) -> RunRecord:
    store = ArtifactStore(root / "cache")
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, CLASSES, N))
    keys, aurocs = [], []
    for i, row in results.reset_index(drop=True).iterrows():
        zepad = row.defense_name == "zepad"
        branches = 3 if zepad else 1
        fusion = {"fusion": ZEPAD_FUSION} if zepad else {}
        feats = {}
        for which, shift in (("clean", 0.0), ("adv", 0.6)):
            centres = rng.normal(size=(CLASSES, DIM)) * 3
            tensors = {"labels": labels} | {f"branch{b}": torch.from_numpy(
                (centres[labels.numpy()] + rng.normal(size=(N, DIM)) + shift).astype(np.float32)) for b in range(branches)}
            feats[which] = f"f{i:03d}{which}".ljust(24, "0")
            store.save("features", feats[which], tensors, {"num_classes": CLASSES, "n": N,
                                                             "feature_dims": [DIM] * branches, **fusion})
        ev = {"labels": labels}
        for which, mean in (("clean", 0.7), ("adv", 0.45)):
            for b in range(branches):
                ev[f"confidence_{which}_branch{b}"] = torch.from_numpy(
                    rng.beta(8 * mean, 8 * (1 - mean), N).astype(np.float32))
        auroc = np.nan
        if zepad:
            from sklearn.metrics import roc_auc_score

            for which, mean in (("clean", -0.05), ("adv", 0.15)):
                ev[f"detection_score_{which}"] = torch.from_numpy(rng.normal(mean, 0.15, N).astype(np.float32))
                ev[f"flagged_{which}"] = ev[f"detection_score_{which}"] > 0.1
            truth = np.r_[np.zeros(N), np.ones(N)]
            auroc = roc_auc_score(truth, np.r_[ev["detection_score_clean"].numpy(), ev["detection_score_adv"].numpy()])
        key = f"e{i:03d}".ljust(24, "0")
        store.save("evaluate", key, ev, {"inputs": {"clean": feats["clean"], "adv": feats["adv"]}})
        keys.append(key)
        aurocs.append(auroc)
    df = results.reset_index(drop=True).assign(key=keys, detection_auroc=aurocs)
    return RunRecord("synthetic", root, df, {}, {"cache_dir": str(root / "cache")})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunRecord:
    return _synthetic_run(tmp_path_factory.mktemp("plots"), pd.read_csv(DATA / "report_fixture.csv"))


@pytest.fixture(scope="module")
def figures(run, tmp_path_factory):
    """Every figure of the fixture run, drawn once: name -> (Figure, PNG size in px)."""
    out = tmp_path_factory.mktemp("pngs")
    ctx = TableContext.defaults(run.results)
    drawn = {}
    for name in PLOTS.names():
        fig = draw(run, name, ctx)
        fig.savefig(out / f"{name}.png", dpi=PNG_DPI, bbox_inches="tight")
        drawn[name] = (fig, Image.open(out / f"{name}.png").size)
    yield drawn
    for fig, _ in drawn.values():
        plt.close(fig)


def _texts(fig) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_title()]


def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


@pytest.mark.parametrize("name", ["confidence", "bars", "heatmap", "eps_sweep", "param_sweep", "tsne", "roc"])
def test_every_figure_is_page_sized_with_readable_text_and_a_panel_per_encoder(figures, name):
    fig, (width, height) = figures[name]
    assert 400 <= width <= 2000 and 250 <= height <= 2600, (width, height)
    assert 0.4 <= width / height <= 4.5, (width, height)  # no ribbon, no tower
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig) if t.get_fontsize() < 9]
    assert not small, small
    titles = [ax.get_title() for ax in _panels(fig)]
    for encoder in ENCODERS:  # unset: every victim encoder has its panel(s)
        assert any(encoder in t for t in titles), (encoder, titles)
    assert all("D_d = " in t for t in titles), titles
    heading = fig.get_suptitle()
    assert "ε" in heading or "ε" in " ".join(ax.get_xlabel() for ax in fig.axes)  # eps: in the title, or the x axis
    assert "semi-black-box" in heading
    for ax in _panels(fig):
        if name not in ("tsne", "bars", "confidence"):  # bars: the ticks say it; confidence: a shared x axis
            assert ax.get_xlabel(), (name, ax.get_title())
        if name != "tsne":
            assert ax.get_ylabel(), (name, ax.get_title())


def test_encoder_option_draws_only_that_encoder(run):
    ctx = TableContext.defaults(run.results, encoder="byol-cifar10")
    for name in ("bars", "confidence", "roc"):
        fig = draw(run, name, ctx)
        titles = [ax.get_title() for ax in _panels(fig)]
        assert titles and all("byol-cifar10" in t and "simclr" not in t for t in titles), titles
        plt.close(fig)
    with pytest.raises(NotCovered, match="no cell of encoder 'vit'.*simclr-cifar10"):
        draw(run, "bars", TableContext.defaults(run.results, encoder="vit"))


def test_bars_have_the_legend_outside_and_one_panel_per_encoder_and_downstream(figures):
    fig, _ = figures["bars"]
    assert len(_panels(fig)) == 2 * 2  # 2 encoders x 2 D_d
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert _legend_texts(fig) == ["none", "pgd_at", "zepad", "zepad-average", "zepad-l10"]
    assert all(ax.get_ylabel() == "accuracy (%)" for ax in _panels(fig))


def test_bars_of_a_wide_grid_wrap_into_a_page_sized_figure(tmp_path):
    """12 attacks x 8 defenses used to give a 2722 x 243 px ribbon with 7 pt ticks."""
    rows = [{"encoder": "simclr", "method": "simclr", "defense": f"defense{d}", "D_f": "c", "D_d": "c",
             "attack": f"attack-{a}", "scenario": "semi_black_box", "eps": 10 / 255, "BA": 0.8, "RA": 0.1 * (a % 9),
             "ASR": 0.2} for d in range(8) for a in range(12)]
    run = RunRecord("wide", tmp_path, pd.DataFrame(rows), {}, {})
    for name in ("bars", "heatmap"):
        fig = draw(run, name, TableContext.defaults(run.results))
        fig.savefig(tmp_path / f"{name}.png", dpi=PNG_DPI, bbox_inches="tight")
        width, height = Image.open(tmp_path / f"{name}.png").size
        assert width <= 2000 and 0.4 <= width / height <= 3, (name, width, height)
        assert min(t.get_fontsize() for t in _texts(fig)) >= 9
        plt.close(fig)


def test_write_plots_saves_png_and_pdf_and_reports_what_it_skips(run, tmp_path):
    files, skipped = write_plots(run, tmp_path, ["roc"], encoder="simclr-cifar10")
    assert sorted(p.name for p in files) == ["roc.pdf", "roc.png"] and not skipped
    assert Image.open(tmp_path / "roc.png").size[0] < 1200  # one encoder: one row of panels
    plain = RunRecord("plain", run.directory, run.results[run.results.defense_name != "zepad"], {}, run.info)
    files, skipped = write_plots(plain, tmp_path / "plain", ["roc"])
    assert not files and "no defense in the run has a detector" in skipped["roc"]


def test_confidence_names_its_branches_and_labels_its_axes(figures):
    fig, _ = figures["confidence"]
    legend = _legend_texts(fig)
    for branch in ("victim", "partner", "BMP"):  # zepad's MPAE = victim + partner, then BMP
        assert f"{branch}, benign" in legend and f"{branch}, adversarial" in legend, legend
    assert not any("branch" in t for t in legend)
    assert {ax.get_xlabel() for ax in _panels(fig)[-2:]} == {"max softmax confidence"}  # the shared x axis, once
    assert {ax.get_ylabel() for ax in _panels(fig)} == {"density"}
    assert len(_panels(fig)) == 2 * 2 * 2  # (encoder x {none, zepad}) rows x 2 D_d


def test_tsne_has_a_class_legend(figures):
    fig, _ = figures["tsne"]
    legend = _legend_texts(fig)
    assert legend[:2] == ["benign", "adversarial"]
    assert legend[2:] == [f"class {c}" for c in range(CLASSES)]
    assert len(_panels(fig)) == 2 * 2  # encoder rows x {none, zepad}


def test_roc_shows_each_attack_with_its_auroc(figures, run):
    fig, _ = figures["roc"]
    panels = _panels(fig)
    assert len(panels) == 2 * 2
    res = run.results
    for ax in panels:
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        assert texts[0] == "chance (AUROC 0.5)" and len(texts) == 3
        encoder = next(e for e in ENCODERS if e in ax.get_title())
        d_d = ax.get_title().split("D_d = ")[1]
        for attack in ("advencoder", "uap"):
            row = res[(res.encoder == encoder) & (res.defense == "zepad") & (res.D_d == d_d) & (res.attack == attack)
                      & (res.scenario == "semi_black_box") & np.isclose(res.eps, 10 / 255)]
            assert f"{attack} (AUROC {row.detection_auroc.iloc[0]:.3f})" in texts
        assert ax.get_xlabel().startswith("false positive rate") and ax.get_ylabel().startswith("true positive rate")


def test_roc_without_a_detector_says_why(run):
    plain = RunRecord("plain", run.directory, run.results[run.results.defense_name != "zepad"], {}, run.info)
    with pytest.raises(NotCovered, match="no defense in the run has a detector"):
        draw(plain, "roc", TableContext.defaults(plain.results))


def test_param_sweep_keeps_only_the_variants_of_the_swept_parameter(figures):
    fig, _ = figures["param_sweep"]
    for ax in _panels(fig):
        xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        assert xs == [10, 20]  # zepad-average (fusion differs) is not a lambda point
    assert _legend_texts(fig) == ["BA", "RA"]

"""The ZePAD paper's own numbers as tidy result rows, so every table builder can read them.

`benchmark/paper/zepad_reported.csv` holds one printed number per row (see its
README). Here they become rows shaped like a run's results (BA / RA / ASR /
detection accuracy as fractions, one row per cell, plus the `table` they came from),
so the same builder lays out "measured" and "paper-reported" blocks. Settings that
name a variant of the defense (Table 5's switches, S3's fusion, S5's lambda) become
the defense's label and parameters; S1/S2's encoder pairs become the victim's name.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd

CSV = Path(__file__).resolve().parents[1] / "paper" / "zepad_reported.csv"
KEYS = ["table", "D_p", "D_f", "D_d", "method", "encoder", "defense", "defense_name", "defense_params", "attack",
        "scenario", "eps"]
VARIANT_SETTINGS = ("adv_ft", "fusion", "lambda")  # settings that name a variant of the defense


def _parse_setting(setting: object) -> dict[str, str]:
    if not isinstance(setting, str) or not setting:
        return {}
    return dict(part.split("=", 1) for part in setting.split(";") if "=" in part)


def _variant(row: pd.Series) -> pd.Series:
    from daebench.report.tables import METHOD_LABELS

    setting = _parse_setting(row["setting"])
    out = {"method": row["ssl_method"], "encoder": row["ssl_method"], "defense": row["defense"],
           "defense_name": row["defense"], "defense_params": "{}", "eps": 10 / 255}
    if "eps" in setting:
        num, den = setting["eps"].split("/")
        out["eps"] = float(num) / float(den)
    if "encoder_pair" in setting:
        out["method"] = ""
        out["encoder"] = "+".join(METHOD_LABELS.get(m, m) for m in setting["encoder_pair"].split("+"))
    if any(k in setting for k in VARIANT_SETTINGS):
        params = {k: (float(v) if k == "lambda" else v) for k, v in setting.items()}
        out["defense"] = row["setting"]
        out["defense_params"] = json.dumps(params, sort_keys=True)
    return pd.Series(out)


@functools.lru_cache(maxsize=1)
def _paper_results() -> pd.DataFrame:
    raw = pd.read_csv(CSV, dtype={"table": str})
    raw = raw[(raw.ssl_method != "avg") & raw.metric.isin(["BA", "RA", "ASR", "detection_accuracy"])]
    variants = raw.apply(_variant, axis=1).reset_index(drop=True)
    raw = pd.concat([raw.drop(columns=["defense"]).reset_index(drop=True), variants], axis=1)
    raw["value"] = raw["value"] / 100
    raw[KEYS[:-1]] = raw[KEYS[:-1]].fillna("")  # pivot_table drops NaN keys; "" stands in, then back to NaN
    tidy = raw.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first").reset_index()
    order = raw.drop_duplicates(KEYS)[KEYS]  # the paper's row order, which pivot_table sorts away
    tidy = order.merge(tidy, on=KEYS, how="left")
    tidy[KEYS[:-1]] = tidy[KEYS[:-1]].replace("", None)
    tidy = tidy.dropna(subset=[m for m in ("BA", "RA", "ASR", "detection_accuracy") if m in tidy], how="all")
    tidy.columns.name = None
    tidy["source"] = "paper-reported"
    return tidy


def paper_results() -> pd.DataFrame:
    """Every paper-reported cell as a tidy row (values as fractions, like a run's)."""
    return _paper_results().copy()

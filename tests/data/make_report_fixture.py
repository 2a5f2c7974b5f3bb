"""Writes report_fixture.csv: a small, fixed, *synthetic* results store for the
table/leaderboard golden-file tests. Its numbers are made up (seeded) and only pin
layouts; they are never shown as results. Re-run only to change the fixture:
    python tests/data/make_report_fixture.py
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(0)
EPS = 10 / 255
DEFENSES = {  # label: (registry name, params)
    "none": ("none", {}),
    "pgd_at": ("pgd_at", {"epochs": 20}),
    "zepad": ("zepad", {"fusion": "rfdm", "lambda": 20}),
    "zepad-average": ("zepad", {"fusion": "average", "lambda": 20}),
    "zepad-l10": ("zepad", {"fusion": "rfdm", "lambda": 10}),
}
rows = []


def row(method, defense, d_d, attack, scenario="semi_black_box", eps=EPS):
    name, params = DEFENSES[defense]
    ba = round(float(rng.uniform(0.6, 0.95)), 4)
    ra = round(float(rng.uniform(0.05, ba)), 4)
    out = {"encoder": f"{method}-cifar10", "method": method, "D_p": "cifar10", "defense": defense, "D_f": "cifar10",
           "D_d": d_d, "attack": attack, "scenario": scenario, "eps": eps, "seed": 0, "defense_name": name,
           "defense_params": json.dumps(params, sort_keys=True), "BA": ba, "RA": ra,
           "ASR": round(float(rng.uniform(0.0, 1 - ra)), 4), "n": 1000,
           "detection_accuracy": round(float(rng.uniform(0.5, 0.9)), 4) if name == "zepad" else np.nan}
    rows.append(out)


for method, defense, d_d, attack in itertools.product(["simclr", "byol"], ["none", "pgd_at", "zepad"],
                                                      ["cifar10", "stl10"], ["advencoder", "uap"]):
    row(method, defense, d_d, attack)
for method, defense in itertools.product(["simclr", "byol"], ["zepad-average", "zepad-l10"]):
    row(method, defense, "cifar10", "advencoder")
for method, defense in itertools.product(["simclr", "byol"], ["none", "zepad"]):
    row(method, defense, "cifar10", "advencoder", scenario="white_box")
    row(method, defense, "cifar10", "advencoder", eps=16 / 255)
pd.DataFrame(rows).to_csv(Path(__file__).with_name("report_fixture.csv"), index=False)

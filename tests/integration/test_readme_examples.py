"""The README's plugin examples run as written: the attack and the defense register,
resolve their profiles, and craft / defend on tiny data (in a subprocess, so the
registries of this test session stay as they are)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python_blocks(section: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    body = readme[readme.index(f"## {section}"):]
    body = body[:body.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_the_adding_a_plugin_examples_run():
    defense, attack, dataset = _python_blocks("Adding a plugin")
    check = textwrap.dedent("""
        import torch
        from daebench.attacks import ATTACKS
        from daebench.data import ImageData, load_dataset
        from daebench.defenses import DEFENSES
        from daebench.encoders import build_encoder

        d = load_dataset("digits", image_size=16)
        data = ImageData("d", d.x_train[:64], d.y_train[:64], d.x_test[:16], d.y_test[:16], d.num_classes)
        torch.manual_seed(0)
        victim = build_encoder("resnet18", width=4)
        cls = DEFENSES.get("my_at")
        model = cls(cls.resolve_params("tiny", {"epochs": 1, "steps": 1, "batch_size": 32})).defend(victim, data)
        assert torch.isfinite(model.branches[0](torch.rand(2, 3, 16, 16))).all()
        cls = ATTACKS.get("feature_shift")
        attack = cls(cls.resolve_params("tiny", {"batch_size": 32}), eps=10 / 255)
        delta, report = attack.craft(victim, data.x_train)
        assert delta.shape == (1, 3, 16, 16) and 0 < delta.abs().max() <= 10 / 255 + 1e-7
        import tempfile, pathlib, numpy as np
        from daebench.data import DATASETS
        root = pathlib.Path(tempfile.mkdtemp())
        rng = np.random.default_rng(0)
        np.savez(root / "my_scans.npz", x_train=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                 y_train=np.arange(8) % 4, x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
                 y_test=np.arange(4))
        scans = DATASETS.get("my_scans")(root, False)
        assert scans.x_train.shape == (8, 3, 32, 32) and scans.num_classes == 4
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", defense + "\n" + attack + "\n" + dataset + "\n" + check], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]

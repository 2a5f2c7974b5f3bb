"""A narrow encoder trains soundly with channels-last memory on a CPU.

oneDNN's backward-weights kernel for a strided 1x1 convolution on channels-last input
with fewer than 16 channels (the shortcut projection of a width-8 ResNet18) writes out
of bounds on AVX-512 CPUs: in float32 everywhere, in bf16 on CPUs without AMX. The heap
corruption showed as a crash, or as Gen-AF's weights differing under one seed (CI).
`ONEDNN_MAX_CPU_ISA` makes an AMX CPU take the bf16 kernel of CPUs without it, so the
checks run wherever the CPU has AVX-512; each in a subprocess, which the bug may kill.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from daebench.encoders import build_encoder
from daebench.provenance import cpu_flags

TRAIN_TWICE = textwrap.dedent("""
    import sys
    import torch
    from daebench.encoders import build_encoder

    amp = sys.argv[1] == "bf16"

    def train():  # the projection alone, at the shape a width-8 victim gives it: 300 steps take ~1 s
        torch.manual_seed(0)
        projection = build_encoder("resnet18", width=8).backbone.layer2[0].downsample[0]
        projection.to(memory_format=torch.channels_last)
        x = torch.randn(115, 8, 34, 34).contiguous(memory_format=torch.channels_last)
        grads = []
        for _ in range(300):
            projection.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = projection(x)
            y.float().square().sum().backward()
            grads.append(projection.weight.grad.clone())
        return torch.stack(grads)

    assert torch.equal(train(), train()), "the same seed gave other gradients"
    print("ok")
""")


@pytest.mark.skipif("avx512f" not in cpu_flags(), reason="the faulty oneDNN kernels are AVX-512 code")
@pytest.mark.parametrize("isa, precision", [("ALL", "float32"), ("AVX512_CORE", "bf16"), ("AVX512_CORE_BF16", "bf16")])
def test_width_8_projection_trains_soundly_in_channels_last(isa, precision):
    run = subprocess.run([sys.executable, "-c", TRAIN_TWICE, precision], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "ONEDNN_MAX_CPU_ISA": isa})
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr[-2000:])


def test_narrow_projection_is_the_plain_convolution_in_any_memory_format():
    encoder = build_encoder("resnet18", width=8)
    projection = encoder.backbone.layer2[0].downsample[0]
    x = torch.rand(2, 8, 8, 8)
    expected = torch.nn.functional.conv2d(x, projection.weight, stride=2)
    torch.testing.assert_close(projection(x.contiguous(memory_format=torch.channels_last)), expected)
    assert isinstance(projection, torch.nn.Conv2d)
    assert "layer2.0.downsample.0.weight" in encoder.backbone.state_dict()  # torchvision's names stay

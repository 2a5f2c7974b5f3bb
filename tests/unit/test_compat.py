import subprocess
import sys


def test_torchvision_and_lightly_import_through_the_shim():
    # A fresh interpreter: the shim must work before anything else imported torchvision.
    code = (
        "from benchmark.compat import import_torchvision\n"
        "tv = import_torchvision()\n"
        "import torch\n"
        "from torchvision.transforms import v2\n"
        "m = tv.models.resnet18(num_classes=3).eval()\n"
        "assert m(torch.rand(1, 3, 32, 32)).shape == (1, 3)\n"
        "assert v2.RandomHorizontalFlip(p=1.0)(torch.arange(4.).view(1, 1, 2, 2)).flatten().tolist() == [1., 0., 3., 2.]\n"
        "from lightly.loss import NTXentLoss\n"
        "loss = NTXentLoss()(torch.randn(4, 8), torch.randn(4, 8))\n"
        "assert torch.isfinite(loss)\n"
        "import daebench.compat as c\n"
        "print('shim' if c.shim_applied else 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"shim", "clean"}


def test_import_is_idempotent():
    from daebench.compat import import_torchvision

    assert import_torchvision() is import_torchvision()

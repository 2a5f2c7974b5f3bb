"""The one place that imports torchvision.

PyPI's torchvision wheels are CUDA builds. Paired with a CPU-only torch, `import
torchvision` dies registering fake kernels for `torchvision::nms` ("operator
torchvision::nms does not exist") -- and so does `import lightly`. Only on that
error we define the two missing operator schemas, drop the half-imported modules
and import again. Models, transforms and datasets then work; `torchvision.ops`
(nms, roi_align) and `torchvision.io` do not, and DAEBench does not use them.
On a machine where torchvision imports cleanly (a matching CUDA or CPU build)
this does nothing.

Call `import_torchvision()` before anything that
imports torchvision or lightly.
"""

from __future__ import annotations

import sys
from types import ModuleType

_MISSING_OP_MARKER = "torchvision::nms does not exist"
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keep the Library object alive: dropping it unregisters the schemas
shim_applied = False


def _drop_half_imported() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision, repairing the CPU-torch / CUDA-torchvision mismatch."""
    global _library, shim_applied
    try:
        import torchvision
    except RuntimeError as err:
        if _MISSING_OP_MARKER not in str(err):
            raise
        import torch

        _drop_half_imported()
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        shim_applied = True
        import torchvision
    return torchvision


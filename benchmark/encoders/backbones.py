"""Backbone architectures, registered by name in `ENCODERS`.

* `resnet18`: the CIFAR variant the paper's victims use (solo-learn): a torchvision
  ResNet18 whose stem is a 3x3 conv, stride 1, no max-pool; output 8*width-d
  (512-d at width 64, the real ResNet18). Parameter names match torchvision's
  (`conv1`, `layer1.0.downsample.0`, ...) so torchvision and solo-learn state dicts
  load without renaming. `width` 16 or 32 makes CPU runs feasible.
  `conv1_padding`: solo-learn trains with 2, the attack repos rebuild it with 1.
* `resnet20` / `resnet56`: He et al.'s CIFAR ResNets with the parameter-free
  "option A" shortcut, as in akamaster/pytorch_resnet_cifar10 (64-d features;
  their `linear` layer is kept as `classifier`).

Every factory returns an `nn.Module` mapping *normalised* images to features and
exposing `feature_dim`; `Encoder` adds the normalisation so that everything outside
a model works on [0, 1] images.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from daebench.registry import Registry

ENCODERS: Registry = Registry("encoder", entry_point_group="daebench.encoders")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _OptionAShortcut(nn.Module):
    """He et al.'s parameter-free shortcut: subsample by 2, zero-pad the channels."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _ProjectionConv(nn.Conv2d):
    """The shortcut's strided 1x1 projection (an `nn.Conv2d`: same parameters, same names).

    On a CPU, one with fewer than 16 input channels takes its input and weights in the
    default memory format: oneDNN's backward-weights kernel for a strided 1x1 convolution on
    channels-last input with under 16 channels writes out of bounds on AVX-512 CPUs
    (float32 everywhere, bf16 without AMX; torch 2.13), so a width-8 encoder trained
    with `channels_last` crashed or came out different under one seed
    (tests/unit/test_onednn_guard.py). At such widths the copy costs nothing measurable."""

    NARROW = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels < self.NARROW and self.stride != (1, 1) and x.device.type == "cpu":
            # a 1x1 kernel's strides pass for channels-last too: clone it to plain ones
            return self._conv_forward(x.contiguous(), self.weight.clone(memory_format=torch.contiguous_format), self.bias)
        return super().forward(x)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same parameter names).

    The shortcut, where shapes change, is torchvision's 1x1 projection
    (`downsample`), or with `option_a` He et al.'s parameter-free CIFAR shortcut.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, option_a: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if option_a:
                self.shortcut = _OptionAShortcut(planes)
            else:
                self.downsample = nn.Sequential(_ProjectionConv(in_planes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = self.shortcut(x) if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet18Cifar(nn.Module):
    """ResNet18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(self, width: int = 64, conv1_padding: int = 2) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"resnet18 width must be a positive integer, got {width}")
        self.width = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, conv1_padding, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width, 8 * width]
        in_planes = width
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(in_planes, p, stride), BasicBlock(p, p)))
            in_planes = p
        self.feature_dim = planes[-1]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The low layer PAP-style attacks read activations from."""
        return F.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate activations by name (stem, layer1..layer4), for layer-wise attacks."""
        out = {"stem": self.stem(x)}
        h = out["stem"]
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(self, name)(h)
            out[name] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)


class ResNet18ImageNet(ResNet18Cifar):
    """ResNet18 with the ImageNet stem (7x7 conv, stride 2, 3x3 max-pool): torchvision's
    and timm's `resnet18` (same parameter names), for ImageNet-pre-trained victims."""

    def __init__(self, width: int = 64, conv1_padding: int = 3) -> None:
        super().__init__(width, conv1_padding)
        self.conv1 = nn.Conv2d(3, width, 7, 2, conv1_padding, bias=False)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


class ResNet18ImageNetStride1(ResNet18Cifar):
    """ResNet18 with a 7x7 conv1 at stride 1 and no max-pool: how the released ZePAD code
    (`utils/load_model.py`) rebuilds its solo-learn ImageNet-100 encoders (conv1 padding 1)
    before loading their weights, and so the network its BYOL-ImageNet-100 partner is."""

    def __init__(self, width: int = 64, conv1_padding: int = 1) -> None:
        super().__init__(width, conv1_padding)
        self.conv1 = nn.Conv2d(3, width, 7, 1, conv1_padding, bias=False)


class CifarResNet(nn.Module):
    """ResNet-20/32/44/56 for CIFAR (16, 32, 64 channels; n blocks per stage)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_planes, planes, stride, option_a=True)]
            blocks += [BasicBlock(planes, planes, option_a=True) for _ in range(blocks_per_stage - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.feature_dim = 64
        # Kept under the checkpoint's own name so akamaster state dicts load as-is.
        self.linear = nn.Linear(64, num_classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"stem": self.stem(x)}
        h = out["stem"]
        for name in ("layer1", "layer2", "layer3"):
            h = getattr(self, name)(h)
            out[name] = h
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)

    @property
    def classifier(self) -> nn.Linear:
        return self.linear


@ENCODERS.register("resnet18")
def resnet18(width: int = 64, conv1_padding: int = 2) -> ResNet18Cifar:
    """ResNet18, CIFAR stem (3x3 conv, no max-pool); 8*width-d features (512 at width 64)."""
    return ResNet18Cifar(width=width, conv1_padding=conv1_padding)


@ENCODERS.register("resnet18_imagenet")
def resnet18_imagenet(width: int = 64, conv1_padding: int = 3) -> ResNet18ImageNet:
    """ResNet18, ImageNet stem (7x7 conv stride 2 + max-pool): loads torchvision / timm
    `resnet18` state dicts (their `fc` head is kept as an extra)."""
    return ResNet18ImageNet(width=width, conv1_padding=conv1_padding)


@ENCODERS.register("resnet18_imagenet_s1")
def resnet18_imagenet_s1(width: int = 64, conv1_padding: int = 1) -> ResNet18ImageNetStride1:
    """ResNet18 with a 7x7 stride-1 conv1 and no max-pool, as the released ZePAD code loads
    solo-learn ImageNet-100 checkpoints (its BYOL partner)."""
    return ResNet18ImageNetStride1(width=width, conv1_padding=conv1_padding)


def default_conv1_padding(arch: str) -> int:
    """The architecture's own conv1 padding (the default of its factory)."""
    import inspect

    return inspect.signature(ENCODERS.get(arch)).parameters["conv1_padding"].default


@ENCODERS.register("resnet20")
def resnet20(width: int = 16, conv1_padding: int = 1) -> CifarResNet:
    """He et al.'s CIFAR ResNet-20 (option-A shortcuts); 64-d features, keeps `linear`."""
    _fixed_width("resnet20", width, conv1_padding)
    return CifarResNet(3)


@ENCODERS.register("resnet56")
def resnet56(width: int = 16, conv1_padding: int = 1) -> CifarResNet:
    """He et al.'s CIFAR ResNet-56 (option-A shortcuts); 64-d features, keeps `linear`."""
    _fixed_width("resnet56", width, conv1_padding)
    return CifarResNet(9)


def _fixed_width(arch: str, width: int, conv1_padding: int) -> None:
    if width != 16 or conv1_padding != 1:
        raise ValueError(
            f"{arch} has a fixed shape (width 16, conv1_padding 1); got width={width}, "
            f"conv1_padding={conv1_padding}. Use resnet18 for a configurable width."
        )


class Encoder(nn.Module):
    """Normalisation + backbone: maps [0, 1] images to feature vectors.

    Normalisation lives here, inside the model, so that attacks, defenses and
    data all work in [0, 1] pixel space and an eps is an eps in pixels.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.feature_dim: int = backbone.feature_dim

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone.forward_features(self.normalize(x))


def build_encoder(
    arch: str,
    width: int = 64,
    conv1_padding: int | None = None,
    mean: Sequence[float] = CIFAR_MEAN,
    std: Sequence[float] = CIFAR_STD,
) -> Encoder:
    """Build a normalising encoder from a registered architecture name
    (`conv1_padding` None: the architecture's own)."""
    factory = ENCODERS.get(arch)
    if conv1_padding is None:
        conv1_padding = default_conv1_padding(arch)
    encoder = Encoder(factory(width=width, conv1_padding=conv1_padding), mean, std)
    # How to rebuild it: stored with every encoder artifact (weights alone are not enough).
    encoder.arch_spec = {"arch": arch, "width": width, "conv1_padding": conv1_padding,
                         "mean": list(mean), "std": list(std)}
    return encoder

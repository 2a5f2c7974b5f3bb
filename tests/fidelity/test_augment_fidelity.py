"""`backend: pil` is solo-learn's own augmentation pipeline (`build_transform_pipeline`),
transcribed here from `solo/data/pretrain_dataloader.py` and run from the same seeds."""

from __future__ import annotations

import random

import torch
from PIL import Image, ImageFilter, ImageOps

from daebench.compat import import_torchvision
from daebench.encoders.ssl.augment import AugmentParams, asymmetric_second_view, augment, symmetric


def solo_learn_view(p: AugmentParams, size: int):
    T = import_torchvision().transforms

    class GaussianBlur:  # solo-learn's: sigma ~ U(0.1, 2.0) from Python's random, PIL filter
        def __call__(self, img):
            return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

    class Solarization:
        def __call__(self, img):
            return ImageOps.solarize(img)

    return T.Compose([
        T.RandomResizedCrop(size, scale=(p.crop_min_scale, p.crop_max_scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)], p=p.jitter_prob),
        T.RandomGrayscale(p=p.grayscale_prob),
        *([T.RandomApply([GaussianBlur()], p=p.blur_prob)] if p.blur_prob else []),
        *([T.RandomApply([Solarization()], p=p.solarize_prob)] if p.solarize_prob else []),
        T.RandomHorizontalFlip(p=p.flip_prob),
        T.ToTensor(),
    ])


def test_pil_backend_is_solo_learns_pipeline():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=g).to(torch.uint8)
    for view in (symmetric(), asymmetric_second_view()):
        p = view.model_copy(update={"backend": "pil"})
        torch.manual_seed(0)
        random.seed(0)
        ours = augment(x.float() / 255, p, torch.Generator())
        torch.manual_seed(0)
        random.seed(0)
        pipeline = solo_learn_view(p, 32)
        ref = torch.stack([pipeline(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in x])
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert "backend" not in symmetric().model_dump()  # the tensor backend keeps the keys it had

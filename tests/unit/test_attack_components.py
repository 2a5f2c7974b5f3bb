"""Building blocks of the attacks: AdvEncoder's HFC filter, InfoNCE and generator,
PAP's noise prior, SSP's feature distortion."""

import math

import pytest
import torch
import torch.nn.functional as F

from daebench.attacks.advencoder import AdvEncoder, AdvEncoderGenerator, high_frequency_component, info_nce
from daebench.attacks.pap import PAP, NoisePrior
from daebench.attacks.ssp import feature_distortion


# -- AdvEncoder: high-frequency component ---------------------------------------
def test_hfc_of_a_constant_image_is_zero():
    x = torch.full((2, 3, 32, 32), 0.7)
    assert high_frequency_component(x, radius=8).abs().max() < 1e-5


def test_hfc_keeps_a_checkerboard():
    i = torch.arange(32)
    board = ((i[:, None] + i[None, :]) % 2).float().expand(1, 3, 32, 32)  # 0/1, the Nyquist frequency
    hfc = high_frequency_component(board, radius=8)
    alternating = board - board.mean()
    assert torch.allclose(hfc, alternating, atol=1e-5)  # only the DC term (inside the disc) is removed
    assert hfc.pow(2).sum() > 0.99 * alternating.pow(2).sum()


def test_hfc_removes_low_frequencies_only():
    i = torch.arange(32).float()
    low = torch.cos(2 * math.pi * 2 * i / 32)[None, :].expand(32, 32)  # frequency 2 < radius 8
    high = torch.cos(2 * math.pi * 12 * i / 32)[None, :].expand(32, 32)  # frequency 12 > radius 8
    x = (low + high).expand(1, 3, 32, 32)
    assert torch.allclose(high_frequency_component(x, radius=8), high.expand(1, 3, 32, 32), atol=1e-4)
    assert torch.allclose(high_frequency_component(x, radius=0), x, atol=1e-5)  # radius 0: nothing removed


# -- AdvEncoder: InfoNCE --------------------------------------------------------
def test_info_nce_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    t = 0.1
    terms = []
    for i in range(5):
        sims = torch.stack([F.cosine_similarity(q[i], p[j], dim=0) / t for j in range(5)])
        terms.append(-(sims[i] - torch.logsumexp(sims, dim=0)))
    assert torch.allclose(info_nce(q, p, t), torch.stack(terms).mean(), atol=1e-5)


def test_info_nce_is_low_for_matched_pairs_and_high_for_moved_ones():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(8, 16, generator=g)
    assert info_nce(q, q, 0.1) < info_nce(q, torch.randn(8, 16, generator=g), 0.1)


# -- AdvEncoder: generator ------------------------------------------------------
@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_output_follows_the_image_size(size):
    net = AdvEncoderGenerator(size, batch_size=4, widths=(16, 8, 8, 4))
    out = net(torch.randn(4, 100, 1, 1))
    assert out.shape == (1, 3, size, size)


def test_generator_grows_for_large_images():
    net = AdvEncoderGenerator(256, batch_size=2, widths=(8, 4))  # 6 doublings, 2 widths given
    assert net(torch.randn(2, 100, 1, 1)).shape == (1, 3, 256, 256)


@pytest.mark.parametrize("size", [4, 24, 48])
def test_generator_rejects_other_sizes(size):
    with pytest.raises(ValueError, match="power-of-two"):
        AdvEncoderGenerator(size, batch_size=2)


def _count(net):
    return sum(p.numel() for p in net.parameters())


def test_generator_at_64_is_the_reference_architecture():
    # model/adv_gan.py: deconvs 100->1024 (k4 s1), 1024->512->256->128 (k4 s2), 128->3 (k4 s2),
    # BatchNorms, and the 3x3 Conv2d from 256 "channels" (the batch) to 1.
    widths, chans = (1024, 512, 256, 128), (100, 1024, 512, 256, 128, 3)
    expected = sum(a * b * 16 + b for a, b in zip(chans, chans[1:])) + 2 * sum(widths) + 256 * 9 + 1
    assert _count(AdvEncoderGenerator(64, batch_size=256)) == expected


def test_default_generator_is_large_and_tiny_is_small():
    full = AdvEncoder.resolve_params("paper")
    tiny = AdvEncoder.resolve_params("tiny")
    n_full = _count(AdvEncoderGenerator(32, full.batch_size, full.widths))
    n_tiny = _count(AdvEncoderGenerator(32, tiny.batch_size, tiny.widths))
    assert 10e6 < n_full < 15e6
    assert n_tiny < 0.5e6


def test_generator_init_is_seeded():
    a = AdvEncoderGenerator(16, 2, (8, 4), generator=torch.Generator().manual_seed(3))
    b = AdvEncoderGenerator(16, 2, (8, 4), generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    convs = [m for m in a.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)


# -- PAP: the noise prior --------------------------------------------------------
def test_pap_noise_images_have_the_sampled_statistics():
    p = PAP.resolve_params("paper")
    prior = PAP(p, eps=10 / 255).noise_prior(torch.Generator().manual_seed(0))
    images = prior.sample(p.noise_images, (3, 64, 64))
    assert images.shape == (8, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert ((prior.mean >= 0.4) & (prior.mean <= 0.6)).all()
    assert ((prior.std >= 0.05) & (prior.std <= 0.10)).all()
    assert torch.allclose(images.mean(dim=(0, 2, 3)), prior.mean, atol=0.005)
    assert torch.allclose(images.std(dim=(0, 2, 3)), prior.std, atol=0.005)


def test_pap_noise_statistics_are_redrawn_every_resample_every_iterations():
    prior = NoisePrior((0.4, 0.6), (0.05, 0.1), resample_every=20, generator=torch.Generator().manual_seed(0))
    stats, images = [], []
    for _ in range(41):
        images.append(prior.sample(2, (3, 4, 4)))
        stats.append(prior.mean.clone())
    assert all(torch.equal(stats[0], s) for s in stats[:20])
    assert not torch.equal(stats[19], stats[20]) and all(torch.equal(stats[20], s) for s in stats[20:40])
    assert not torch.equal(stats[39], stats[40])
    assert not torch.equal(images[0], images[1])  # the noise itself is fresh every iteration


def test_pap_rejects_inverted_ranges():
    from daebench.errors import ConfigError
    with pytest.raises(ConfigError):
        PAP.resolve_params("paper", {"mean_lo": 0.7, "mean_hi": 0.6})


# -- SSP -----------------------------------------------------------------------------
def test_feature_distortion_is_a_per_sample_mse():
    adv, clean = torch.ones(2, 3, 4, 4) * 2, torch.ones(2, 3, 4, 4)
    assert torch.allclose(feature_distortion(adv, clean, square=False), torch.ones(2))
    assert torch.allclose(feature_distortion(adv, clean, square=True), torch.full((2,), 9.0))


def test_pap_noise_is_unclamped_when_crafting_is_unclamped():
    prior = NoisePrior((0.4, 0.6), (0.5, 0.6), resample_every=20, generator=torch.Generator().manual_seed(0))
    images = prior.sample(8, (3, 8, 8), clamp=False)
    assert images.min() < 0 and images.max() > 1  # std 0.5: the reference's noise leaves [0, 1]


# -- UAP: PAP's augmentation -----------------------------------------------------------
def test_random_resized_crop_flip_is_seeded_and_keeps_shape_and_range():
    from daebench.attacks.uap import random_resized_crop_flip

    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # bilinear: no overshoot
    assert not torch.equal(a, x)


def test_random_resized_crop_of_the_whole_image_is_the_image_or_its_mirror():
    from daebench.attacks.uap import random_resized_crop_flip

    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(2), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for o, i in zip(out, x):
        assert torch.allclose(o, i, atol=1e-6) or torch.allclose(o, i.flip(-1), atol=1e-6)


def test_crop_box_follows_torchvisions_rule():
    from daebench.attacks.uap import _crop_box

    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        top, left, h, w = _crop_box(32, 32, g, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 32 - h and 0 <= left <= 32 - w
        assert 0.08 * 1024 * 0.8 <= h * w <= 1024 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    assert _crop_box(8, 8, g, (2.0, 3.0), (1.0, 1.0)) == (0, 0, 8, 8)  # no try fits: the centre crop

"""The attacks against independent transcriptions of the released code, in float64.

Each test below re-states one piece of a reference implementation from reading it
(never imported or pasted: the references are not installed here), runs it and
DAEBench's implementation on the same fixed random tensors, and requires values and
gradients to agree to 1e-6. The references (see docs/FIDELITY.md):

* AdvEncoder: CGCL-codes/AdvEncoder utils/fr_util.py `generate_high`, utils/nce.py
  `info_nce` (the defaults `InfoNCE()` uses), gan_per_attack.py's generator loss;
* PAP (L4A-ugs): banyuanhao/PAP utils/L4A_ugs.py (noise prior, hook, loss);
* SSP: banyuanhao/PAP utils/ssp.py;
* UAPGD: banyuanhao/PAP utils/uapepgd.py (`get_delta` and the outer loop);
* DeepFool: banyuanhao/PAP utils/uap.py `deepfool`;
* EmbedAttack: layer6ai-labs/ssl-robustness evaluators/attack.py `PGD_Sign`.

DAEBench's options that reproduce a reference exactly (clamp_craft: false, PAP's
drop_last_real, ...) are switched on where the default deviates on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from daebench.attacks import ATTACKS
from daebench.attacks.advencoder import high_frequency_component, info_nce
from daebench.attacks.pap import NoisePrior

EPS = 10 / 255
DTYPE = torch.float64


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Agreement to 1e-6 (relative, with a tiny absolute floor for values near zero)."""
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-9)


def make_attack(name: str, **params):
    cls = ATTACKS.get(name)
    return cls(cls.resolve_params("paper", params), eps=EPS, seed=0)


def rand(*shape: int, seed: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=DTYPE) * (high - low) + low)


class StagedNet(nn.Module):
    """A SimCLRv2-like encoder: `net` is a list of stages (stem, layer1, layer2) that the
    references hook by index; `forward_features` is what DAEBench reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        bn = nn.BatchNorm2d(4)
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        self.net = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), bn, nn.ReLU()),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh()),
            nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.fc = nn.Linear(6, 5)
        self.to(DTYPE).eval()

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stem = self.net[0](x)
        layer1 = self.net[1](stem)
        return {"stem": stem, "layer1": layer1, "layer2": self.net[2](layer1)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).mean(dim=(2, 3)))


def classifier(scale: float = 1.0, seed: int = 0) -> nn.Module:
    """A small image classifier (10 classes); `scale` multiplies the logits."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 10))
    with torch.no_grad():
        model[3].weight.mul_(scale)
        model[3].bias.mul_(scale)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(DTYPE).eval()


# -- AdvEncoder: the HFC filter (fr_util.py generate_high) ------------------------------
def reference_hfc(images: torch.Tensor, r: float) -> torch.Tensor:
    """generate_high: a disc mask of 1s where sqrt((i - N/2)^2 + (j - N/2)^2) < r (N =
    the row count), FFT over the last two axes, fftshift over ALL axes, multiply by
    (1 - mask), ifftshift over all axes, inverse FFT, real part."""
    bs, c, h, w = images.shape
    mask = torch.zeros((h, w), dtype=images.dtype)
    for i in range(h):
        for j in range(w):
            mask[i, j] = 1.0 if np.sqrt((i - h / 2) ** 2 + (j - h / 2) ** 2) < r else 0.0
    x = images.reshape(bs * c, h, w)
    fd = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)))
    fd = fd * (1.0 - mask.unsqueeze(0).repeat(bs * c, 1, 1))
    fd = torch.real(torch.fft.ifftn(torch.fft.ifftshift(fd), dim=(-2, -1)))
    return fd.reshape(bs, c, h, w)


@pytest.mark.parametrize("size,radius", [(16, 4), (32, 8), (64, 8)])
def test_hfc_equals_generate_high(size, radius):
    x = rand(3, 3, size, size, seed=1).requires_grad_(True)
    weights = rand(3, 3, size, size, seed=2, low=-1)
    ours, ref = high_frequency_component(x, radius), reference_hfc(x, radius)
    close(ours, ref)
    close(torch.autograd.grad((ours * weights).sum(), x)[0], torch.autograd.grad((ref * weights).sum(), x)[0])


# -- AdvEncoder: InfoNCE (utils/nce.py, InfoNCE() defaults) --------------------------------
def reference_info_nce(query: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """info_nce with no negative keys, reduction 'mean': unit vectors, logits = the cosine of
    every (query_i, positive_j) pair, cross-entropy against the diagonal; one row at a time."""
    terms = []
    for i in range(len(query)):
        row = torch.stack([(query[i] / query[i].norm()) @ (positive[j] / positive[j].norm())
                           for j in range(len(positive))]) / temperature
        terms.append(torch.logsumexp(row, dim=0) - row[i])
    return torch.stack(terms).mean()


def test_info_nce_equals_the_package_defaults():
    q = rand(6, 5, seed=3, low=-1).requires_grad_(True)
    p = rand(6, 5, seed=4, low=-1).requires_grad_(True)
    ours, ref = info_nce(q, p, 0.1), reference_info_nce(q, p)
    close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (q, p)), torch.autograd.grad(ref, (q, p))):
        close(a, b)


def test_advencoder_generator_loss_equals_gan_per_attack():
    """G_loss = alpha * (-InfoNCE(model(x), model(x + noise))) + MSE(x + noise, x)
    - MSE(HFC(x), HFC(x + noise)), x + noise unclamped (clamp_craft: false)."""
    encoder = StagedNet()
    attack = make_attack("advencoder", clamp_craft=False, radius=4.0)
    x = rand(6, 3, 16, 16, seed=5)
    noise = rand(1, 3, 16, 16, seed=6, low=-EPS, high=EPS).requires_grad_(True)
    f_x = x + noise.expand(x.shape)
    ref = (5 * -reference_info_nce(encoder(x), encoder(f_x), 0.1) + F.mse_loss(f_x, x)
           - F.mse_loss(reference_hfc(x, 4), reference_hfc(f_x, 4)))
    with torch.no_grad():
        clean = encoder(x)
    ours = attack.generator_loss(encoder, x, noise, [clean])
    close(ours, ref)
    close(torch.autograd.grad(ours, noise)[0], torch.autograd.grad(ref, noise)[0])


# -- PAP: L4A-ugs (utils/L4A_ugs.py) ---------------------------------------------------------
def reference_l4a_ugs_loss(model: StagedNet, data: torch.Tensor, delta: torch.Tensor, lamuda: float) -> torch.Tensor:
    """The loop body: a hook on model.net[0] that appends the squared output (registered
    twice, as the reference does), model(data + delta), then
    mean(activations[0][0:8]) + lamuda * mean(activations[0][8:-1])."""
    activations = []

    def hook(module, inputs, output):
        activations.append(torch.square(output))

    handles = [model.net[0].register_forward_hook(hook), model.net[0].register_forward_hook(hook)]
    model(data + delta)
    for handle in handles:
        handle.remove()
    loss = torch.tensor(0.0, dtype=DTYPE)
    return loss + (torch.mean(activations[0][0:8]) + torch.mean(activations[0][8:-1]) * lamuda)


def test_pap_noise_prior_equals_the_reference_draws():
    """std then mean, each rand(3) * (hi - lo) + lo, then randn(8, 3, H, W) * std_c + mean_c."""
    prior = NoisePrior((0.4, 0.6), (0.05, 0.10), resample_every=20, generator=torch.Generator().manual_seed(7))
    ours = prior.sample(8, (3, 8, 8), clamp=False)
    g = torch.Generator().manual_seed(7)
    std = torch.rand(3, generator=g) * (0.10 - 0.05) + 0.05
    mean = torch.rand(3, generator=g) * (0.6 - 0.4) + 0.4
    ref = torch.randn(8, 3, 8, 8, generator=g)
    for c in range(3):
        ref[:, c] = ref[:, c] * std[c] + mean[c]
    close(ours, ref)


def test_pap_loss_equals_l4a_ugs():
    encoder = StagedNet()
    attack = make_attack("pap", clamp_craft=False, drop_last_real=True)
    data = torch.cat([rand(8, 3, 16, 16, seed=8, low=-0.5, high=1.5), rand(5, 3, 16, 16, seed=9)])
    delta = rand(1, 3, 16, 16, seed=10, low=-EPS, high=EPS).requires_grad_(True)
    ours, ref = attack.objective(encoder, data, delta), reference_l4a_ugs_loss(encoder, data, delta, 0.01)
    close(ours, ref)
    close(torch.autograd.grad(ours, delta)[0], torch.autograd.grad(ref, delta)[0])


# -- SSP (utils/ssp.py) ------------------------------------------------------------------------
def reference_ssp_loss(model: StagedNet, image: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """A squaring hook on model.net[2]; the clean activations under no_grad; the adversarial
    ones at image + delta; MSELoss(clean, adversarial)."""
    activations = []

    def hook(module, inputs, output):
        activations.append(torch.square(output))

    handle = model.net[2].register_forward_hook(hook)
    with torch.no_grad():
        model(image)
    clean = activations[0].clone().detach()
    handle.remove()
    activations.clear()
    handle = model.net[2].register_forward_hook(hook)
    model(image.clone().detach() + delta)
    handle.remove()
    return nn.MSELoss()(clean, activations[0])


def test_ssp_loss_equals_the_pap_code():
    encoder = StagedNet()
    attack = make_attack("ssp", clamp_craft=False)
    image = rand(5, 3, 16, 16, seed=11)
    delta = rand(1, 3, 16, 16, seed=12, low=-EPS, high=EPS).requires_grad_(True)
    ours, ref = attack.objective(encoder, image, delta), reference_ssp_loss(encoder, image, delta)
    close(ours, ref)
    close(torch.autograd.grad(ours, delta)[0], torch.autograd.grad(ref, delta)[0])


# -- UAPGD (utils/uapepgd.py) --------------------------------------------------------------------
def reference_get_delta(model: nn.Module, image_copy: torch.Tensor, clean_label: torch.Tensor, bound: float,
                        alpha: float, draw: torch.Tensor) -> tuple[torch.Tensor, int]:
    """get_delta, with its torch.rand replaced by `draw` (the same uniform numbers DAEBench
    draws): delta0 = bound * draw * 2 - bound, v = 0, beta 0.5, gamma 1e-5; while t < 10:
    normalised logits at image_copy + delta0, their argmax, CE against the clean label,
    v = beta v + gamma (image_copy + delta0) + grad, delta0 += sign(v) alpha, and break if
    the argmax (before the step) differed from the clean label. Returns (delta0, steps)."""
    v = torch.zeros_like(image_copy)
    delta0 = (bound * draw.to(DTYPE) * 2 - bound).requires_grad_(True)
    t = 0
    while t < 10:
        t += 1
        adv_pre = F.normalize(model(image_copy + delta0), dim=1)
        adv_label = adv_pre.argmax(1)
        loss = nn.CrossEntropyLoss()(adv_pre, clean_label)
        loss.backward()
        with torch.no_grad():
            v = 0.5 * v + 1e-5 * (image_copy + delta0) + delta0.grad
            delta0 = delta0 + v.sign() * alpha
        delta0 = delta0.detach().requires_grad_(True)
        if clean_label != adv_label:
            break
    return delta0.detach(), t


@pytest.mark.parametrize("scale,alpha,expect_break", [(1.0, 0.02, True), (3e3, 0.002, False)])
def test_uapgd_image_update_equals_get_delta(scale, alpha, expect_break):
    """One image's full update, delta after it. The first case stops early (the break
    order matters); the second takes all 10 steps with gradients so small that the
    gamma term decides signs (large logits: normalising divides the gradient)."""
    model = classifier(scale)
    attack = make_attack("uapgd", clamp_craft=False)
    x = rand(1, 3, 8, 8, seed=13)
    delta = rand(1, 3, 8, 8, seed=14, low=-EPS, high=EPS)
    label = model(x).argmax(1)
    draw = torch.rand((1, 3, 8, 8), generator=torch.Generator().manual_seed(15))
    ref_delta0, steps = reference_get_delta(model, x + delta, label, EPS, alpha, draw)
    assert (steps < 10) == expect_break, f"the case does not exercise what it should ({steps} steps)"
    ours_delta0 = attack.reference_image_update(model, x + delta, label, alpha, torch.Generator().manual_seed(15))
    close(torch.clip(delta + ours_delta0, -EPS, EPS), torch.clip(delta + ref_delta0, -EPS, EPS))
    close(ours_delta0, ref_delta0)


def test_uapgd_pass_equals_uapepgd():
    """The outer loop (uapepgd): delta0 ~ U[-b, b]; per image, in the shuffled order, k += 1;
    clean and adversarial argmax of the normalised logits; on a match, get_delta at
    image + delta with alpha 0.002 if k < 10000 else 0.0002 (here the switch at k < 3,
    to exercise it), delta = clip(delta + delta0). Same draws: the initial delta, the
    order, then one delta0 per updated image, from one generator."""
    model = classifier(1.0, seed=1)
    x = rand(8, 3, 8, 8, seed=16)
    attack = make_attack("uapgd", clamp_craft=False, step_size=0.02, step_size_late=0.005, step_decay_at=3)
    ours, report = attack._perturb_reference(model, x, torch.Generator().manual_seed(17))

    g = torch.Generator().manual_seed(17)
    delta = EPS * torch.rand((1, 3, 8, 8), generator=g).to(DTYPE) * 2 - EPS
    order = torch.randperm(len(x), generator=g).tolist()
    k = updated = 0
    for i in order:
        k += 1
        image = x[i:i + 1]
        with torch.no_grad():
            clean_label = F.normalize(model(image), dim=1).argmax(1)
            adv_label = F.normalize(model(image + delta), dim=1).argmax(1)
        if adv_label == clean_label:
            draw = torch.rand((1, 3, 8, 8), generator=g)
            delta0, _ = reference_get_delta(model, image + delta, clean_label, EPS, 0.02 if k < 3 else 0.005, draw)
            delta = torch.clip(delta + delta0, -EPS, EPS)
            updated += 1
    assert 2 <= updated, "the pass should update delta more than once"
    assert report["images_updated"] == updated and report["images_seen"] == len(x)
    close(ours, delta)


# -- DeepFool (utils/uap.py deepfool) --------------------------------------------------------------
def reference_deepfool(image: torch.Tensor, net: nn.Module, num_classes: int = 10, overshoot: float = 0.02,
                       max_iter: int = 50) -> tuple[torch.Tensor, int, int, int]:
    """deepfool: candidates = the top-num_classes logits at the image, label = the first;
    while the prediction is the label and loop_i < max_iter: the gradient of every
    candidate's logit, w_k = grad_k - grad_label, f_k = f_k - f_label, pert_k =
    |f_k| / ||w_k||, the smallest wins; r_i = (pert + 1e-4) w / ||w||; r_tot += r_i (cast
    to float32, as the reference's np.float32); image + (1 + overshoot) r_tot is the next
    point. Returns ((1 + overshoot) r_tot, loop_i, label, k_i)."""
    f_image = net(image).detach().numpy().flatten()
    candidates = f_image.argsort()[::-1][:num_classes]
    label = candidates[0]
    r_tot = np.zeros(image.shape)
    loop_i, k_i = 0, label
    x = image.clone().requires_grad_(True)
    fs = net(x)
    while k_i == label and loop_i < max_iter:
        pert, w = np.inf, None
        grad_orig = torch.autograd.grad(fs[0, candidates[0]], x, retain_graph=True)[0].numpy()
        for k in range(1, num_classes):
            cur_grad = torch.autograd.grad(fs[0, candidates[k]], x, retain_graph=True)[0].numpy()
            w_k = cur_grad - grad_orig
            f_k = (fs[0, candidates[k]] - fs[0, candidates[0]]).detach().numpy()
            pert_k = abs(f_k) / np.linalg.norm(w_k.flatten())
            if pert_k < pert:
                pert, w = pert_k, w_k
        r_i = (pert + 1e-4) * w / np.linalg.norm(w)
        r_tot = np.float32(r_tot + r_i)
        x = (image + (1 + overshoot) * torch.from_numpy(r_tot).to(DTYPE)).requires_grad_(True)
        fs = net(x)
        k_i = int(np.argmax(fs.detach().numpy().flatten()))
        loop_i += 1
    return torch.from_numpy((1 + overshoot) * r_tot).to(DTYPE), loop_i, int(label), k_i


@pytest.mark.parametrize("max_iter", [1, 50])
def test_deepfool_equals_the_pap_code(max_iter):
    """One DeepFool step (max_iter 1) and a whole run, on three images at once (each must
    match its own sequential run)."""
    model = classifier(1.0, seed=2)
    attack = make_attack("uap", clamp_craft=False, max_iter_df=max_iter)
    z = rand(3, 3, 8, 8, seed=18, low=0.3, high=0.7)
    steps, converged = attack.deepfool(model, z)
    for i in range(len(z)):
        r, loops, label, k_i = reference_deepfool(z[i:i + 1], model, max_iter=max_iter)
        torch.testing.assert_close(steps[i:i + 1], r, rtol=1e-6, atol=1e-7)  # the reference rounds r_tot to float32
        assert bool(converged[i]) == (k_i != label)
        if max_iter > 1:
            assert loops < max_iter and k_i != label, "the whole run should converge"


# -- EmbedAttack (ssl-robustness evaluators/attack.py PGD_Sign) -------------------------------------
def test_embedattack_equals_pgd_sign():
    """delta ~ U[-eps, eps]; each of num_steps steps: MSELoss(f(images + delta), f(images))
    backward, delta += sign(grad) lr, then delta = clamp(images + delta, 0, 1) - images and
    clamp(delta, -eps, eps). The first gradient is at the raw start (project_start: false)."""
    encoder = StagedNet()
    attack = make_attack("embedattack", project_start=False, steps=5)
    images = rand(4, 3, 16, 16, seed=19)
    images[0] = 0.0  # saturated pixels: the box binds
    ours = attack.pgd_per_sample(encoder, images, torch.Generator().manual_seed(20), 5, 2 / 255)

    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(20))
    delta = ((u * 2 - 1) * EPS).to(DTYPE).requires_grad_(True)
    with torch.no_grad():
        original = encoder(images)
    for _ in range(5):
        nn.MSELoss()(encoder(images + delta), original).backward()
        with torch.no_grad():
            delta += torch.sign(delta.grad) * (2 / 255)
            delta.copy_(torch.clamp(images + delta, 0, 1) - images)
            delta.copy_(torch.clamp(delta, -EPS, EPS))
        delta.grad.zero_()
    close(ours, delta.detach())
    assert (ours[0] >= 0).all() and (ours[0] > 0).any()  # the box bound on the saturated image

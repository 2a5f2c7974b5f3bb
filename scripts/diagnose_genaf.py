"""Watch Gen-AF's stage 1 step by step: does the D_f head stay a classifier?

Runs the real `GenAF` pieces (its PGD, its genetic regularisation, the shared
two-optimiser scheme) on a cached victim encoder for a few optimiser steps and
prints, every few steps, the adversarial CE, the GR term, the encoder gradient
norm, and probes of the head on 512 test images: accuracy, the fraction of dead
hidden ReLUs, the logits' norm and their spread across samples (a head whose
logits all point one way has collapsed: cosine-based GR then sees no structure).

    python scripts/diagnose_genaf.py --victim-key 21ae828b04e2690cdd5ab824 --steps 13
"""

from __future__ import annotations

import argparse
import json

import torch

from daebench.config import parse_overrides
from daebench.data import load_dataset
from daebench.encoders.models import unpack_branches
from daebench.heads import HeadParams, head_optimizer, make_head, train_head
from daebench.provenance import provenance
from daebench.runtime import batches, seed_everything
from daebench.store import ArtifactStore
from daebench.defenses.genaf import GenAF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", default="results/cache")
    ap.add_argument("--victim-key", required=True, help="key of a cached `pretrain` artifact")
    ap.add_argument("--dataset", default="npz:../shared/data/cifar10-subset.npz")
    ap.add_argument("--steps", type=int, default=13)
    ap.add_argument("--head-lr", type=float, default=5e-3)
    ap.add_argument("--gr-reduction", choices=["sum", "mean"], default="sum")
    ap.add_argument("--warm-head", action="store_true", help="start from a head trained on the frozen clean features")
    ap.add_argument("--head-hidden", type=int, default=None, help="the D_f head's hidden width (default: the feature dimension)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GenAF parameter (YAML value)")
    args = ap.parse_args()

    overrides = parse_overrides(args.set)
    genaf = GenAF(GenAF.resolve_params("paper", {"head_lr": args.head_lr, **overrides}), seed=0)
    p = genaf.params
    print(json.dumps({"args": vars(args), "genaf": p.model_dump(), "provenance": provenance("cpu")}))
    store = ArtifactStore(args.cache_dir)
    artifact = store.load("pretrain", args.victim_key)
    encoder = unpack_branches(artifact.tensors, artifact.meta)[0]
    for param in encoder.parameters():
        param.requires_grad_(True)
    data = load_dataset(args.dataset, image_size=32)
    generator = seed_everything(0)
    head = make_head(encoder.feature_dim, data.num_classes, HeadParams(hidden=args.head_hidden))
    if args.warm_head:
        with torch.no_grad():
            encoder.eval()
            feats = torch.cat([encoder(data.x_train[i].float().div(255)) for i in batches(len(data.x_train), 512)])
        head = train_head(feats, data.y_train, data.num_classes, HeadParams(hidden=args.head_hidden), seed=0)
        generator = seed_everything(0)
    enc_opt = torch.optim.Adam(encoder.parameters(), lr=p.encoder_lr, weight_decay=p.weight_decay)
    head_opt, _ = head_optimizer(head, HeadParams(lr=p.head_lr, weight_decay=p.weight_decay, lr_decay=p.lr_decay))
    x_probe, y_probe = data.x_test[:512].float().div(255), data.y_test[:512]

    @torch.no_grad()
    def probe() -> str:
        encoder.eval()
        head.eval()
        h, dead = encoder(x_probe), []
        for layer in head:
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                dead.append(float((h.max(0).values <= 0).float().mean()))
        acc = float((h.argmax(1) == y_probe).float().mean())
        return (f"head acc {acc:.3f}  dead ReLUs {' / '.join(f'{d:.2f}' for d in dead)}  "
                f"logit norm {float(h.norm(dim=1).mean()):.3g}  spread over samples {float(h.std(0).mean()):.3g}")

    print(f"step 0  {probe()}", flush=True)
    step = 0
    while step < args.steps:
        for idx in batches(len(data.x_train), p.batch_size, generator):
            x, y = data.x_train[idx].float().div(255), data.y_train[idx]
            enc_opt.zero_grad(set_to_none=True)  # before the terms: the released PGD leaks into .grad
            head_opt.zero_grad(set_to_none=True)
            terms = genaf.stage1_terms(encoder, head, x, y)
            ce, gr = terms["ce"], terms["gr"] if "gr" in terms else terms["lf"]  # `paper` variant: L_f
            if args.gr_reduction == "mean":
                gr = gr / len(y)
            (ce + p.lam * gr).backward()
            grad = float(sum(q.grad.norm() ** 2 for q in encoder.parameters() if q.grad is not None) ** 0.5)
            enc_opt.step()
            head_opt.step()
            step += 1
            if step % 4 == 1 or step == args.steps:
                print(f"step {step}  CE(x') {float(ce.detach()):.3f}  GR {float(gr.detach()):.3f}  encoder grad {grad:.3g}  |  {probe()}",
                      flush=True)
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()

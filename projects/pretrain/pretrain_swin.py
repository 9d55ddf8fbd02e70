#!/usr/bin/env python
"""Pre-train a small Swin from scratch on the glyphs pre-text task; write an official-layout
checkpoint (``{"model": ...}``, classifier ``norm``/``head``), as Microsoft's releases are.

The result is the project's stand-in for ``swin_tiny_patch4_window7_224.pth``: the demos and the
transfer comparison fine-tune from it through the very loader a user's checkpoint takes. It is
shipped (``e3va_d2/model_zoo``), not rebuilt, because it takes about an hour on 2 CPU cores
(the defaults below are the shipped checkpoint's settings, seed 0):

    python -m projects.pretrain.pretrain_swin --output swin_glyphs.pth

Recipe: AdamW (lr 1e-3, weight decay 0.05, none on norms, biases and position-bias tables),
linear warm-up then cosine decay, label smoothing 0.1, gradient clipping at 5, a new image for
every sample (the stream never repeats, so no augmentation is needed), ImageNet normalisation
of RGB input as for the released Swins. Two targets: the image's class (from the mean of the
token logits, the release's classifier) and, per last-stage token, the class of the glyph that
covers it or "background" (see ``token_labels``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import time
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e3va_d2.checkpoint import atomic_save
from e3va_d2.data.glyphs import GLYPH_CLASSES, GLYPH_SPLITS, GlyphStream
from e3va_d2.modeling import SwinTransformer

logger = logging.getLogger("e3va_d2.pretrain")

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SwinClassifier(nn.Module):
    """Swin trunk + the release's classifier: final LayerNorm, global average pool, linear."""

    def __init__(self, trunk: SwinTransformer, num_classes: int):
        super().__init__()
        self.trunk = trunk
        last = trunk.num_features[trunk.num_stages - 1]
        self.head = nn.Linear(last, num_classes + 1)  # + "background" for token labels
        self.stride = trunk.size_divisibility
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(image logits (B, K), token logits (B, K + 1, h, w)); the image's are the mean of the
        tokens' (the head is linear), without the background class."""
        (features,) = self.trunk((images - self.mean) / self.std).values()  # normed last stage
        tokens = self.head(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return tokens.mean(dim=(2, 3))[:, :-1], tokens


def official_state_dict(model: SwinClassifier, dtype: torch.dtype) -> Dict[str, Tensor]:
    """Our trunk's keys are the official ones, except that the classifier's final norm is
    ``norm`` (not an output norm ``norm{i}``)."""
    last = model.trunk.num_stages - 1
    out = {}
    for key, value in model.trunk.state_dict().items():
        out["norm." + key.split(".", 1)[1] if key.startswith(f"norm{last}.") else key] = value
    out.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    return {k: v.detach().to(dtype).clone() for k, v in out.items()}


def parameter_groups(model: nn.Module, weight_decay: float):
    """No decay on norms, biases and position-bias tables (as in Swin's own recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith("relative_position_bias_table") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def token_labels(coverage: Tensor, labels: Tensor, stride: int, background: int) -> Tensor:
    """(B, h, w) class of each last-stage token: the glyph's where it covers at least a quarter
    of the token's cell, else ``background``. Dense labels give every image many targets: with
    the image label alone, a Swin trained from scratch sat at chance for the first few hundred
    steps (how much sooner the dense targets get it past that was not measured)."""
    frac = F.avg_pool2d(coverage[:, None], stride, stride, ceil_mode=True)[:, 0]
    return torch.where(frac >= 0.25, labels[:, None, None], torch.full_like(labels, background)[:, None, None])


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for images, labels, _ in loader:
        correct += int((model(images)[0].argmax(1) == labels).sum())
        total += labels.numel()
    model.train()
    return correct / max(total, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="checkpoint path (official Swin layout)")
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 2, 6, 2])
    p.add_argument("--num-heads", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--window-size", type=int, default=7)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2800)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=2048)
    p.add_argument("--eval-period", type=int, default=400)
    p.add_argument("--workers", type=int, default=0,
                   help="processes rendering images (0: in the training process, fastest on 2 "
                        "cores; images depend only on their index, so results do not change)")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="dtype of the written tensors (float16 halves the file)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.manual_seed(args.seed)
    trunk = SwinTransformer(
        embed_dim=args.embed_dim, depths=args.depths, num_heads=args.num_heads,
        window_size=args.window_size, drop_path_rate=0.0,
        out_features=(f"p{len(args.depths) - 1}",),
    )
    model = SwinClassifier(trunk, len(GLYPH_CLASSES))
    opt = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr)
    warmup = max(int(args.warmup * args.steps), 1)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(args.steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    stream = GlyphStream(GLYPH_SPLITS["train"] + 1000 * args.seed, args.steps * args.batch_size,
                         args.image_size)
    train_loader = torch.utils.data.DataLoader(
        stream, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    val_loader = torch.utils.data.DataLoader(
        GlyphStream(GLYPH_SPLITS["val"], args.val_images, args.image_size), batch_size=256,
        num_workers=args.workers,
    )
    params = sum(p.numel() for p in trunk.parameters())
    logger.info("Swin embed %d depths %s heads %s: %.2fM trunk parameters, %d classes",
                args.embed_dim, args.depths, args.num_heads, params / 1e6, len(GLYPH_CLASSES))
    start, seen, history = time.time(), 0, []
    run_loss = run_acc = None
    for step, (images, labels, coverage) in enumerate(train_loader):
        logits, token_logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1) + F.cross_entropy(
            token_logits, token_labels(coverage, labels, model.stride, len(GLYPH_CLASSES))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        seen += labels.numel()
        acc = float((logits.argmax(1) == labels).float().mean())
        loss_value = float(loss.detach())
        run_loss = loss_value if run_loss is None else 0.95 * run_loss + 0.05 * loss_value
        run_acc = acc if run_acc is None else 0.95 * run_acc + 0.05 * acc
        if (step + 1) % 50 == 0:
            logger.info("step %d/%d loss %.3f train acc %.3f lr %.2e %.1f img/s", step + 1,
                        args.steps, run_loss, run_acc, sched.get_last_lr()[0],
                        seen / (time.time() - start))
        if (step + 1) % args.eval_period == 0 and step + 1 < args.steps:
            val = evaluate(model, val_loader)
            history.append({"step": step + 1, "val_accuracy": val})
            logger.info("step %d held-out accuracy %.4f", step + 1, val)
            atomic_save({"model": official_state_dict(model, torch.float32), "step": step + 1},
                        args.output + ".partial")
    minutes = (time.time() - start) / 60
    val = evaluate(model, val_loader)
    history.append({"step": args.steps, "val_accuracy": val})
    logger.info("final held-out accuracy %.4f on %d images (chance %.4f), %.1f min", val,
                args.val_images, 1 / len(GLYPH_CLASSES), minutes)
    meta = {
        "pretext": "glyphs", "classes": list(GLYPH_CLASSES), "val_accuracy": val,
        "val_images": args.val_images, "train_minutes": round(minutes, 1),
        "args": vars(args), "history": history, "torch": str(torch.__version__),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    atomic_save({"model": official_state_dict(model, getattr(torch, args.dtype)), "meta": meta},
                args.output)
    with open(args.output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    logger.info("wrote %s (%.1f MB, sha256 %s)", args.output, os.path.getsize(args.output) / 1e6,
                digest)
    print(json.dumps({"val_accuracy": val, "minutes": round(minutes, 1), "sha256": digest}))
    return meta


if __name__ == "__main__":
    main()

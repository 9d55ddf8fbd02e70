#!/usr/bin/env python
"""Pre-train a small Swin from scratch on the glyph scenes pre-text task; resumable, exactly.

The result is the project's stand-in for ``swin_tiny_patch4_window7_224.pth``: the demos and the
accuracy study fine-tune from it through the very loader a user's checkpoint takes. It is
shipped (``e3va_d2/model_zoo``), not rebuilt, because it takes many CPU hours:

    python -m projects.pretrain.pretrain_swin --run-dir projects/pretrain/runs/scenes_e32

runs (or continues) the shipped trunk's recipe and, at its end, writes ``<run-dir>/swin.pth``
in the official layout (``{"model": ...}`` with the classifier's ``norm`` and ``head``).

**Resuming.** Every ``--checkpoint-period`` steps the whole state (weights, AdamW moments, step)
is written atomically to ``<run-dir>/last_checkpoint.pth``; a stopped or killed run started
again with the same arguments continues from there and ends with the very weights an
uninterrupted run gives (images are a function of their index, and the schedule of the step,
so the data position and the learning rate follow from the step). ``<run-dir>/metrics.jsonl``
keeps the training and held-out curves; ``--plot`` draws them.

**Recipe.** AdamW (lr 1e-3, weight decay 0.05, none on norms, biases and position-bias
tables), linear warm-up, then a constant rate and a cosine decay over the last
``--decay-fraction`` of the steps (so that a run whose held-out curve has flattened can be
ended early by a smaller ``--steps``: the steps before the decay are the same), gradient
clipping at 5, bf16 autocast (``--amp``; the weights and AdamW stay fp32), ImageNet
normalisation of RGB input as for the released Swins, a new image for every sample. Targets
(:mod:`projects.pretrain.pretext`): the main glyph's class and style from the mean of the last
stage's token logits (the release's classifier), and per token the class of the glyph that
covers it at strides 32 and 16 and its style at stride 16 (heads used only here).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e3va_d2.checkpoint import atomic_save, atomic_write
from e3va_d2.modeling import SwinTransformer
from projects.pretrain.pretext import SCENE_CLASSES, SCENE_SPLITS, STYLES, SceneStream
from projects.tables import command_line, publish, table_head, table_row

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

logger = logging.getLogger("e3va_d2.pretrain")

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# Arguments that define the run: resuming with other values would not continue the same run.
TOKEN_STRIDES = (16, 32)  # strides of the heads' inputs: the last two stages (patch 4, 4 stages)
RECIPE_KEYS = ("embed_dim", "depths", "num_heads", "window_size", "image_size", "batch_size",
               "lr", "weight_decay", "warmup_steps", "seed", "amp")


class SwinPretrainer(nn.Module):
    """Swin trunk + the release's classifier (final LayerNorm, token-wise linear, mean) and the
    pre-text's extra heads: style from the last stage, class and style per stride-16 token.
    Every head has a last "background" output for tokens no glyph covers."""

    def __init__(self, trunk: SwinTransformer, num_classes: int, num_styles: int):
        super().__init__()
        self.trunk = trunk
        mid, last = (trunk.num_features[i] for i in (trunk.num_stages - 2, trunk.num_stages - 1))
        self.head = nn.Linear(last, num_classes + 1)
        self.style_head = nn.Linear(last, num_styles + 1)
        self.dense_head = nn.Linear(mid, num_classes + 1)
        self.dense_style_head = nn.Linear(mid, num_styles + 1)
        self.register_buffer("mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        """Token logits per head, (B, K + 1, h, w)."""
        mid, last = self.trunk((images - self.mean) / self.std).values()

        def tokens(head: nn.Linear, x: Tensor) -> Tensor:
            return head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

        return {"class": tokens(self.head, last), "style": tokens(self.style_head, last),
                "dense_class": tokens(self.dense_head, mid),
                "dense_style": tokens(self.dense_style_head, mid)}


def image_logits(token_logits: Tensor) -> Tensor:
    """The image's logits: the tokens' mean (the head is linear, so this is the release's
    pool-then-classify), without the background output."""
    return token_logits.mean(dim=(2, 3))[:, :-1]


def losses(outputs: Dict[str, Tensor], labels: Tensor, styles: Tensor,
           dense: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Image class and style (label-smoothed; style at half weight) and the token labels: class
    at the last stage's stride and the one before, style at the one before."""
    mid, last = TOKEN_STRIDES
    return {
        "class": F.cross_entropy(image_logits(outputs["class"]), labels, label_smoothing=0.1),
        "style": 0.5 * F.cross_entropy(image_logits(outputs["style"]), styles, label_smoothing=0.1),
        "tokens_class": F.cross_entropy(outputs["class"].float(), dense[f"class@{last}"]),
        "tokens_dense_class": F.cross_entropy(outputs["dense_class"].float(),
                                              dense[f"class@{mid}"]),
        "tokens_dense_style": F.cross_entropy(outputs["dense_style"].float(),
                                              dense[f"style@{mid}"]),
    }


def official_state_dict(model: SwinPretrainer, dtype: torch.dtype) -> Dict[str, Tensor]:
    """The trunk in the official classifier layout: its last output norm is ``norm``, the class
    head ``head``; the pre-text's other heads and norms are dropped."""
    last = model.trunk.num_stages - 1
    out = {}
    for key, value in model.trunk.state_dict().items():
        if key.startswith("norm"):
            if key.startswith(f"norm{last}."):
                out["norm." + key.split(".", 1)[1]] = value
            continue
        out[key] = value
    out.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    return {k: v.detach().to(dtype).clone() for k, v in out.items()}


def parameter_groups(model: nn.Module, weight_decay: float):
    """No decay on norms, biases and position-bias tables (as in Swin's own recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        no_weight_decay = p.ndim == 1 or name.endswith("relative_position_bias_table")
        (no_decay if no_weight_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, args) -> float:
    """Warm-up, constant, then cosine decay over the last ``decay_fraction`` of the steps."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    decay_start = int(args.steps * (1 - args.decay_fraction))
    if step < decay_start:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - decay_start) / max(args.steps - decay_start, 1)))


def set_lr(opt: torch.optim.Optimizer, args, step: int) -> None:
    """The rate of the update after ``step`` completed ones (a function of the step alone, so
    that a resumed run follows the same schedule)."""
    for group in opt.param_groups:
        group["lr"] = args.lr * lr_factor(step, args)


def autocast(args):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp)


@torch.no_grad()
def evaluate(model: SwinPretrainer, loader, args) -> Dict[str, float]:
    model.eval()
    correct = styles_correct = total = 0
    for images, labels, styles, _ in loader:
        with autocast(args):
            outputs = model(images)
        correct += int((image_logits(outputs["class"]).argmax(1) == labels).sum())
        styles_correct += int((image_logits(outputs["style"]).argmax(1) == styles).sum())
        total += labels.numel()
    model.train()
    return {"val_accuracy": correct / max(total, 1),
            "val_style_accuracy": styles_correct / max(total, 1)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True,
                   help="folder of the run: last_checkpoint.pth, metrics.jsonl, swin.pth")
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 2, 6, 2])
    p.add_argument("--num-heads", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--window-size", type=int, default=7)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30000,
                   help="total steps; may be lowered while the run is before its decay")
    p.add_argument("--decay-fraction", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 autocast (about 2x faster on CPUs with bf16 matmuls)")
    p.add_argument("--val-images", type=int, default=2048)
    p.add_argument("--eval-period", type=int, default=500)
    p.add_argument("--checkpoint-period", type=int, default=100)
    p.add_argument("--log-period", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core free)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes rendering images (images depend only on their index, so "
                        "the result does not change)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (with a checkpoint) after this long; run again to continue")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="dtype of the shipped file's tensors (float16 halves it)")
    p.add_argument("--plot", action="store_true", help="only draw the curves of --run-dir")
    p.add_argument("--record", default="",
                   help="only publish the run's held-out curve as this docs table "
                        "(projects/tables.py) and draw docs/pretrain_curves.png")
    return p.parse_args(argv)


def build(args) -> Tuple[SwinPretrainer, torch.optim.Optimizer]:
    torch.manual_seed(args.seed)
    trunk = SwinTransformer(
        embed_dim=args.embed_dim, depths=args.depths, num_heads=args.num_heads,
        window_size=args.window_size, drop_path_rate=0.0,
        out_features=(f"p{len(args.depths) - 2}", f"p{len(args.depths) - 1}"),
    )
    strides = tuple(trunk.output_shape()[f].stride for f in trunk._out_features)
    if strides != TOKEN_STRIDES:
        raise SystemExit(f"the heads expect stages of strides {TOKEN_STRIDES}, "
                         f"this Swin has {strides}")
    model = SwinPretrainer(trunk, len(SCENE_CLASSES), len(STYLES))
    opt = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr)
    return model, opt


def read_metrics(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metrics(run_dir: str, records: List[dict]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(os.path.join(run_dir, "metrics.jsonl"), lambda f: f.write(text.encode()))


def resume(args, model, opt) -> Tuple[int, float, Dict[str, float], List[dict]]:
    """Load ``last_checkpoint.pth`` of the run if there is one: (steps done, seconds spent
    training so far, the loss sums of the log window under way, metrics)."""
    path = os.path.join(args.run_dir, "last_checkpoint.pth")
    if not os.path.exists(path):
        logger.info("no %s: a new run starts at step 0 (run state is not committed: the shipped "
                    "trunk's run continues only where its folder was kept)", path)
        return 0, 0.0, {}, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    mismatch = {k: (state["recipe"][k], getattr(args, k)) for k in RECIPE_KEYS
                if state["recipe"][k] != getattr(args, k)}
    if mismatch:
        raise SystemExit(f"{path} was written with other settings {mismatch} (saved, given); "
                         f"use another --run-dir or the saved settings")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    # Metrics past the checkpoint belong to steps that will run again.
    records = [r for r in read_metrics(args.run_dir) if r["step"] <= state["step"]]
    logger.info("resumed %s at step %d", path, state["step"])
    return state["step"], state["seconds"], state["window"], records


def save_state(args, model, opt, step: int, seconds: float, window: Dict[str, float],
               records: List[dict]) -> None:
    """Metrics first: a kill between the two writes leaves metrics ahead of the checkpoint,
    which ``resume`` trims, never a checkpoint without its metrics."""
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    write_metrics(args.run_dir, records)
    atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "seconds": seconds, "window": window, "recipe": recipe},
                os.path.join(args.run_dir, "last_checkpoint.pth"))


def plot(run_dir: str, out: str) -> None:
    """Training loss and held-out accuracy against images seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([r["images"] / 1e6 for r in train], [r["loss"] for r in train])
    a.set(xlabel="images seen (M)", ylabel="training loss (all targets)", title="training")
    b.plot([r["images"] / 1e6 for r in val], [100 * r["val_accuracy"] for r in val], "o-",
           label="class (36)")
    b.plot([r["images"] / 1e6 for r in val], [100 * r["val_style_accuracy"] for r in val], "s--",
           label="style (7)")
    b.set(xlabel="images seen (M)", ylabel="held-out accuracy (%)", title="held-out scenes")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def require_run_state(run_dir: str, option: str) -> None:
    """Stop with what is missing and where the committed curve lives, when ``run_dir`` holds
    no run (run state is not in git; a fresh clone has none)."""
    missing = [n for n in ("last_checkpoint.pth", "metrics.jsonl")
               if not os.path.isfile(os.path.join(run_dir, n))]
    if missing:
        raise SystemExit(
            f"{option} reads a run's state, and {run_dir} has no {' or '.join(missing)}: train "
            "there first (run state is not committed). The shipped trunk's curve is in "
            "docs/records/pretrain-scenes.json; `python -m projects.tables` re-renders it.")


def curve_data(args) -> dict:
    """What the docs say of a run: its held-out curve, where it stands, what it cost so far."""
    require_run_state(args.run_dir, "--record")
    state = torch.load(os.path.join(args.run_dir, "last_checkpoint.pth"), map_location="cpu",
                       weights_only=True)
    records = [r for r in read_metrics(args.run_dir) if r["step"] <= state["step"]]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    return {
        "curve": [{k: r[k] for k in ("step", "images", "val_accuracy", "val_style_accuracy")}
                  for r in records if "val_accuracy" in r],
        "step": state["step"], "steps": args.steps,
        "train_hours": round(state["seconds"] / 3600, 2),
        "images_per_s": statistics.median(speeds) if speeds else None,
        "threads": args.threads, "workers": args.workers,
        "batch_size": state["recipe"]["batch_size"],
    }


def record_curve(args, argv) -> dict:
    data = curve_data(args)
    publish(args.record, data, "projects.pretrain.pretrain_swin:render",
            command_line("projects.pretrain.pretrain_swin", argv))
    plot(args.run_dir, os.path.join(ROOT, "docs", "pretrain_curves.png"))
    return data


def render(data: dict, every: int = 2000) -> str:
    """Held-out accuracy every ``every`` steps (and the last), then where the run stands."""
    rows = [r for r in data["curve"] if r["step"] % every == 0 or r is data["curve"][-1]]
    lines = table_head(["step", "images seen", "held-out class accuracy (36)",
                        "style accuracy (7)"])
    lines += [table_row([str(r["step"]), f"{r['images'] / 1e6:.2f}M",
                         f"{100 * r['val_accuracy']:.1f}%",
                         f"{100 * r['val_style_accuracy']:.1f}%"]) for r in rows]
    speed = "" if data["images_per_s"] is None else (
        f", median {data['images_per_s']:.0f} images/s")
    state = ("finished" if data["step"] >= data["steps"] else
             f"at step {data['step']} of {data['steps']}, resumable")
    cores = data["threads"] + data.get("workers", 0)
    return "\n".join(lines) + (
        f"\n\nThe run is {state}: {data['train_hours']:.1f} h of training"
        f"{'' if data['step'] >= data['steps'] else ' so far'} with "
        f"{data['threads']} training thread(s) and {data.get('workers', 0)} data worker(s) "
        f"(about {cores * data['train_hours']:.0f} CPU hours), batch {data['batch_size']}{speed}.")


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    os.makedirs(args.run_dir, exist_ok=True)
    if args.plot:
        require_run_state(args.run_dir, "--plot")
        plot(args.run_dir, os.path.join(args.run_dir, "curves.png"))
        return {}
    if args.record:
        return record_curve(args, argv)
    torch.set_num_threads(args.threads)
    model, opt = build(args)
    step, seconds, window, records = resume(args, model, opt)
    if step > args.steps:
        raise SystemExit(f"the run in {args.run_dir} is at step {step}, past --steps {args.steps}")
    set_lr(opt, args, step)
    logger.info("Swin embed %d depths %s heads %s: %.2fM trunk parameters; %d classes, %d styles",
                args.embed_dim, args.depths, args.num_heads,
                sum(p.numel() for p in model.trunk.parameters()) / 1e6, len(SCENE_CLASSES),
                len(STYLES))
    stream = SceneStream(SCENE_SPLITS["train"] + 1000 * args.seed,
                         max(args.steps - step, 0) * args.batch_size, args.image_size,
                         start=step * args.batch_size, token_strides=TOKEN_STRIDES)
    train_loader = torch.utils.data.DataLoader(stream, batch_size=args.batch_size, shuffle=False,
                                               num_workers=args.workers,
                                               prefetch_factor=4 if args.workers else None)
    val_loader = torch.utils.data.DataLoader(
        SceneStream(SCENE_SPLITS["val"], args.val_images, args.image_size, token_strides=()),
        batch_size=128,
        num_workers=args.workers)
    start, first = time.time(), step

    def spent() -> float:
        return seconds + time.time() - start

    for images, labels, styles, dense in train_loader:
        with autocast(args):
            outputs = model(images)
        parts = losses(outputs, labels, styles, dense)
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        set_lr(opt, args, step)
        for k, v in parts.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["accuracy"] = window.get("accuracy", 0.0) + float(
            (image_logits(outputs["class"]).argmax(1) == labels).float().mean())
        if step % args.log_period == 0:
            record = {k: round(v / args.log_period, 4) for k, v in window.items()}
            record.update(step=step, images=step * args.batch_size,
                          loss=round(sum(record[k] for k in parts), 4),
                          lr=opt.param_groups[0]["lr"],
                          images_per_s=round((step - first) * args.batch_size
                                             / (time.time() - start), 1))
            records.append(record)
            window = {}
            logger.info("step %d/%d loss %.3f train acc %.3f lr %.2e %.1f img/s", step, args.steps,
                        record["loss"], record["accuracy"], record["lr"], record["images_per_s"])
        if step % args.eval_period == 0 or step == args.steps:
            val = evaluate(model, val_loader, args)
            records.append({"step": step, "images": step * args.batch_size, **val})
            logger.info("step %d held-out accuracy %.4f (style %.4f)", step, val["val_accuracy"],
                        val["val_style_accuracy"])
        if step % args.checkpoint_period == 0 or step == args.steps:
            save_state(args, model, opt, step, spent(), window, records)
        if args.max_minutes is not None and time.time() - start > 60 * args.max_minutes:
            save_state(args, model, opt, step, spent(), window, records)
            logger.info("stopping after %.1f min at step %d; run again to continue",
                        args.max_minutes, step)
            return {"step": step}
    return finish(args, model, records, spent())


def finish(args, model, records, seconds: float) -> dict:
    """Write the shipped file; its ``meta`` says what it reached and what it cost."""
    final = [r for r in records if "val_accuracy" in r][-1]
    out = os.path.join(args.run_dir, "swin.pth")
    meta = {"pretext": "glyph scenes", "classes": list(SCENE_CLASSES), "styles": list(STYLES),
            "val_accuracy": final["val_accuracy"],
            "val_style_accuracy": final["val_style_accuracy"],
            "val_images": args.val_images, "steps": args.steps,
            "train_hours": round(seconds / 3600, 2),
            "threads": args.threads, "torch": str(torch.__version__)}
    atomic_save({"model": official_state_dict(model, getattr(torch, args.dtype)), "meta": meta},
                out)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    logger.info("wrote %s (%.1f MB, sha256 %s); held-out accuracy %.4f", out,
                os.path.getsize(out) / 1e6, digest, final["val_accuracy"])
    return {"val_accuracy": final["val_accuracy"], "sha256": digest,
            "train_hours": meta["train_hours"]}


if __name__ == "__main__":
    main()

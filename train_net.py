#!/usr/bin/env python
"""Train or evaluate an e3va-d2 config, like detectron2's tools/lazyconfig_train_net.py (for a
``.py`` LazyConfig) and tools/train_net.py (for a ``.yaml`` yacs config).

    python train_net.py --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py \
        --num-gpus 8 train.init_checkpoint=/path/to/swin_base_patch4_window7_224_22k.pth
    python train_net.py --config-file ... --eval-only train.init_checkpoint=output/model_final.pth
    python train_net.py --config-file ... --resume
    python train_net.py --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.yaml \
        SOLVER.MAX_ITER 20

On a machine without CUDA, ``--num-gpus N`` starts N CPU processes (gloo). ``--eval-only``
refuses a model whose trainable part was never loaded (``train.eval_untrained=True`` allows it).
Checkpoints are read as data only (``--trust-checkpoint-code`` for a file you trust); a training
run holds its output folder (one run per folder); settings and the output folder are checked
before anything is written there; see docs/RELIABILITY.md.
"""
import contextlib
import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import e3va_d2  # noqa: F401  (registers datasets and backbones)
from e3va_d2.checkpoint import E3VACheckpointer, load_delta
from e3va_d2.config import ConfigError, add_e3va_config, load_config
from e3va_d2.config.reliability import reliability_settings
from e3va_d2.engine import E3VATrainer, YacsTrainer, launch
from e3va_d2.engine.checks import check_training_settings, check_yacs_training_settings
from e3va_d2.engine.launch import DEFAULT_TIMEOUT, backend_for_device
from e3va_d2.engine.output_dir import check_output_dir
from e3va_d2.engine.run_lock import OutputDirLock
from e3va_d2.utils.safe_load import trust_checkpoint_code

logger = logging.getLogger("e3va_d2")


def do_eval(cfg):
    """Evaluate ``train.init_checkpoint`` (+ ``train.delta_checkpoint``) on ``dataloader.test``."""
    model = E3VATrainer.build_model(cfg)
    settings = reliability_settings(cfg)
    checkpointer = E3VACheckpointer(model, cfg.train.output_dir,
                                    allow_shape_mismatch=settings.allow_shape_mismatch)
    with trust_checkpoint_code(settings.trust_checkpoint_code):
        checkpointer.load(cfg.train.init_checkpoint)
    if cfg.train.get("delta_checkpoint", ""):
        load_delta(model, cfg.train.delta_checkpoint)
    elif checkpointer.untrained and not cfg.train.get("eval_untrained", False):
        raise ConfigError(untrained_eval_message(cfg, checkpointer))
    return E3VATrainer.test(cfg, model)


def untrained_eval_message(cfg, checkpointer) -> str:
    init = cfg.train.init_checkpoint
    if not init:
        what = "train.init_checkpoint is empty"
    elif checkpointer.loaded_pretrained_backbone:
        what = f"train.init_checkpoint={init} is a pre-trained Swin, not a model trained here"
    else:
        what = f"train.init_checkpoint={init} lacks them"
    out = cfg.train.output_dir
    return (
        f"--eval-only would evaluate {len(checkpointer.untrained)} trainable tensors that were "
        f"never trained ({what}), e.g. {checkpointer.untrained[:3]}. Pass a trained model, "
        f"train.init_checkpoint={out}/model_final.pth, or its base and delta, "
        f"train.init_checkpoint=<the base it was trained from> "
        f"train.delta_checkpoint={out}/model_final_delta.pth. "
        "train.eval_untrained=True evaluates it anyway (debugging).")


def yacs_config(args):
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.trust_checkpoint_code:
        cfg.MODEL.TRUST_CHECKPOINT_CODE = True
    return cfg


def holding(output_dir, args):
    """The output folder's lock for a training run (main process); nothing for --eval-only,
    which may run beside a training."""
    if args.eval_only or not comm.is_main_process():
        return contextlib.nullcontext()
    return OutputDirLock(output_dir)


def yacs_main(args):
    """detectron2's tools/train_net.py, with the e3va-d2 keys and trainer."""
    cfg = yacs_config(args)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using the CPU",
                       cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")  # before anything is written there
    if not args.eval_only:
        check_yacs_training_settings(cfg)
    with holding(cfg.OUTPUT_DIR, args):
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="e3va_d2")
        if args.eval_only:
            model = YacsTrainer.build_model(cfg)
            settings = reliability_settings(cfg)
            with trust_checkpoint_code(settings.trust_checkpoint_code):
                E3VACheckpointer(model, cfg.OUTPUT_DIR,
                                 allow_shape_mismatch=settings.allow_shape_mismatch
                                 ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            return YacsTrainer.test(cfg, model)
        trainer = YacsTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def main(args):
    if args.config_file.endswith((".yaml", ".yml")):
        return yacs_main(args)
    cfg = load_config(args.config_file, args.opts)
    if args.trust_checkpoint_code:
        cfg.train.trust_checkpoint_code = True
    check_output_dir(cfg.train.output_dir, "train.output_dir")  # before anything is written
    if not args.eval_only:
        check_training_settings(cfg)
    with holding(cfg.train.output_dir, args):
        return lazy_main(cfg, args)


def log_resolved_config(cfg) -> None:
    """detectron2's default_setup logs a LazyConfig's file as written, without the command
    line's overrides, and saves the config that runs as <output_dir>/config.yaml: log that."""
    path = os.path.join(cfg.train.output_dir, "config.yaml")
    if comm.is_main_process() and os.path.isfile(path):
        with open(path) as f:
            logger.info("Running with this config (the file and its overrides, saved as %s):"
                        "\n%s", path, f.read())


def lazy_main(cfg, args):
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="e3va_d2")
    log_resolved_config(cfg)
    if args.eval_only:
        return do_eval(cfg)
    trainer = E3VATrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        logger.info("Final evaluation: %s", dict(results))
    return results


def _config(args):
    is_yacs = args.config_file.endswith((".yaml", ".yml"))
    return yacs_config(args) if is_yacs else load_config(args.config_file, args.opts)


def dist_timeout(args):
    """train.dist_timeout_minutes (yacs: DIST_TIMEOUT_MINUTES): the process group is created
    with it, so it is read here, before the processes start."""
    if args.num_gpus * args.num_machines <= 1:
        return DEFAULT_TIMEOUT
    return reliability_settings(_config(args)).dist_timeout


def dist_backend(args):
    """gloo or NCCL for the device the config trains on (train.device, yacs MODEL.DEVICE), not
    for the hardware: train.device=cpu on a GPU machine is CPU DDP, over gloo."""
    if args.num_gpus * args.num_machines <= 1:
        return "gloo"  # no process group
    cfg = _config(args)
    return backend_for_device(cfg.MODEL.DEVICE if "MODEL" in cfg else cfg.train.get("device"))


def launch_main(args):
    """``main`` in ``--num-gpus`` processes per machine (one: in this process)."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=dist_backend(args),
        timeout=dist_timeout(args),
    )


def parse_args(argv=None):
    parser = default_argument_parser()
    # detectron2's default --dist-url is one fixed port per user: two launches at once on one
    # machine (two runs, the parallel tests) met there. "auto": a free port, reserved until the
    # process group listens on it (one machine; several take the same tcp://HOST:PORT each).
    parser.set_defaults(dist_url="auto")
    parser.add_argument("--trust-checkpoint-code", action="store_true",
                        help="read checkpoint files that need full unpickling, which can run "
                        "any code they hold (files you trust only)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    launch_main(parse_args())

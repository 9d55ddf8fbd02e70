"""Trainer settings read by ``E3VATrainer`` (see its docstring for every key); the keys of
detectron2's ``configs/common/train.py`` mean the same, so its stock tools read them too."""
import torch

train = dict(
    output_dir="./output",
    init_checkpoint="",  # a Swin ImageNet checkpoint (official, timm or detectron2 layout)
    delta_checkpoint="",  # optional: trainable weights exported by a previous run
    max_iter=90000,
    device="cuda" if torch.cuda.is_available() else "cpu",
    # dtype None: bfloat16, or float16 (with a grad scaler) on GPUs without native bfloat16
    amp=dict(enabled=False, dtype=None),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=5000,
    # --eval-only refuses a model whose trainable part was never loaded (untrained adapters and
    # heads would be evaluated: AP ~0). True evaluates it anyway, for debugging.
    eval_untrained=False,
    # Checkpoints are read as data (tensors, arrays, plain containers), never as code: a file
    # that needs more is refused. True reads such a file with full unpickling, which can run
    # any code it holds: only for files you trust (--trust-checkpoint-code does the same).
    trust_checkpoint_code=False,
    # A checkpoint whose tensors of trainable modules have other shapes than the model's
    # (another adapter rank, another number of classes) is an error. True loads what fits and
    # leaves the rest as initialised (fine-tuning a detector on other classes). Never on resume.
    allow_shape_mismatch=False,
    # How long a process waits for the others (joining the process group, any collective)
    # before it fails with a message, instead of hanging.
    dist_timeout_minutes=30.0,
    log_period=20,
    # The process count the batch size and lr are meant for; E3VATrainer.auto_scale_workers
    # rescales them to the processes in use (detectron2's SOLVER.REFERENCE_WORLD_SIZE). 0: off.
    reference_world_size=0,
    seed=-1,
    # TorchScript code (RetinaNet's focal loss) switches to an optimised plan after its first
    # calls, whose gradients differ in the last bits: a resumed process would then take other
    # steps than the uninterrupted run. False keeps every call on the first plan (exact
    # resume); True allows the optimised one (fused kernels on GPU).
    optimize_torchscript=False,
)

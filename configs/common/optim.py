"""AdamW over the trainable parameters only, no weight decay on norms, biases and the relative
position bias tables (paper appendix A: AdamW; decay 0.05 as in the Swin detectors)."""
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

AdamW = L(torch.optim.AdamW)(
    # get_default_optimizer_params skips parameters with requires_grad=False; the trainer sets
    # params.model before instantiating.
    params=L(get_default_optimizer_params)(
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        overrides={"relative_position_bias_table": {"weight_decay": 0.0}},
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
)

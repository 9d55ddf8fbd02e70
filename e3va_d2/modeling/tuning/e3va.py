"""E3VA: adapters on a highway beside the frozen trunk (the paper's method and its ablations)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from ..adapters import ADAPTER_INITS, ADAPTER_KINDS, HIGHWAY_STRUCTURES
from ..branch_recompute import RECOMPUTE_BRANCHES
from ..highway import HIGHWAY_PREFIX, E3VAHighway
from ..highway_walk import feedback_blocks
from ..trunk_precision import TRUNK_DTYPES, narrow_trunk_blocks
from .base import OptionError, TuningMethod, option, output_norm_parameters, register_tuning
from .inserted import LoRATuning, insert_into_blocks, inserted_parameters, lora_branch

__all__ = ["E3VATuning"]

SAVED_INPUT_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16,
                      "float8_e4m3fn": torch.float8_e4m3fn}


@register_tuning("e3va", rank=8)
@register_tuning("e3va_plus", rank=16)
@register_tuning("e3va_plusplus", rank=32)
@dataclass
class E3VATuning(TuningMethod):
    """Options (paper defaults first):

    rank: rank of each of the two low-rank branches (8 / 16 / 32 for E3VA / + / ++).
    hidden_ratio: adapter bottleneck width as a fraction of the channels (paper: 1/2).
    hidden_dim: a fixed bottleneck width instead (Table 5's standard adapter uses 32). Setting
        it together with a non-default hidden_ratio is an error: both would name the width,
        and whichever won, the other value the config states would be silently ignored.
    init: how the dual low-rank factors are drawn; the paper says only "Kaiming Norm".
        "lorand" (default): the outer two factors of the same lab's released LoRand code
        (kaiming_uniform_ with a=sqrt(5) over its (in, r) / (r, out) factor layout; LoRand's
        (k, k) core has no counterpart here; adapters start at about a sixth of their input).
        "kaiming_fan_in": Kaiming normal over each factor's own fan-in (this project's first
        reading; adapters start several times larger than their input).
        "trunc_normal": std 0.02 (Mona's). See DualLowRankLinear.
    adapter_kind: "dual_low_rank" or "standard" (Table 5).
    structure: "parallel" or "stacked" (Table 6).
    zero_init: start with ``A(x) == x`` so training starts exactly at the frozen model
        (the paper initialises every adapter weight with Kaiming normal instead).
    recompute_adapters: store only each adapter's input for backward and recompute its
        low-rank internals (a few % of the highway's FLOPs) instead of storing them; also
        recompute the patch merging norms on the highway, whose input would be a second
        copy of the tokens the output norms keep.
    saved_input_dtype: None, "bfloat16", "float16" or "float8_e4m3fn": keep each adapter's
        copy of its input (the trunk's branch output, the bulk of what E3VA saves for
        backward) in that dtype: half of fp32 for the 16-bit ones, a quarter for float8
        (scaled per tensor). The forward pass is unchanged; the adapters' weight gradients
        see the rounded input. Under AMP the inputs already are 16-bit, so only float8
        narrows them further.
    trainable_downsampling: train copies of the patch merging layers (Table 7, "trainable").
    train_output_norms: train the norms between highway and FPN (Table 7, "trainable").
    recompute_branches: None, "block" or "stage". Lossless: while training, keep one tensor
        of the trunk's stream per block (half of the default's two) or per stage (one for all
        its blocks) for backward, instead of the adapters' inputs, and recompute the trunk's
        branch outputs from it in backward: same gradients, one more forward pass of the
        trunk's blocks per step. "stage" keeps less for the same recomputation.
    trunk_dtype: None, "bfloat16" or "float16": hold and run the frozen trunk's blocks in this
        dtype while highway, neck and heads stay float32. Halves the blocks' weights and what
        the adapters keep (their inputs are kept in this dtype, exactly as the trunk produced
        them, unless saved_input_dtype is narrower). Lossy: the trunk's features are rounded
        (float16 also narrows their range: a trunk that overflows it stops with an error).
    feedback_depth: the trunk's last k blocks (counted from its end, across stages: 2 = the last
        stage of a Swin, up to every block) run on the highway's stream instead of the frozen
        one, with autograd on their frozen weights: attention and MLP there compute on the
        corrected features, and gradients reach earlier adapters through them. Costs those
        blocks' activations; the blocks before keep nothing, as without it. 0 (default): E3VA.
    feedback_lora: also train LoRA inside the feedback blocks, and nowhere else: the lora
        method's pair (its default rank, zero-initialised, so training starts at the model
        without it) beside their attention and MLP. Needs feedback_depth >= 1 and a float32
        trunk (trunk_dtype None: LoRA's trainable weights would run in the narrowed blocks).
    """

    trunk_runs_without_grad = True

    rank: int = option(8, minimum=1)
    hidden_ratio: float = 0.5
    hidden_dim: Optional[int] = option(None, minimum=1)
    init: str = option("lorand", choices=ADAPTER_INITS)
    adapter_kind: str = option("dual_low_rank", choices=ADAPTER_KINDS)
    structure: str = option("parallel", choices=HIGHWAY_STRUCTURES)
    zero_init: bool = False
    recompute_adapters: bool = True
    saved_input_dtype: Optional[str] = option(None, choices=tuple(SAVED_INPUT_DTYPES))
    trainable_downsampling: bool = False
    train_output_norms: bool = True
    recompute_branches: Optional[str] = option(None, choices=RECOMPUTE_BRANCHES)
    trunk_dtype: Optional[str] = option(None, choices=tuple(TRUNK_DTYPES))
    feedback_depth: int = option(0, minimum=0)
    feedback_lora: bool = False

    def __post_init__(self):
        super().__post_init__()  # types, ranges and choices of every option
        if self.saved_input_dtype is not None and not self.recompute_adapters:
            raise OptionError("E3VATuning", "saved_input_dtype",
                              " needs recompute_adapters=True (without it backward keeps the "
                              "adapters' internals too, at full width)")
        if self.recompute_branches is not None and self.saved_input_dtype is not None:
            raise OptionError("E3VATuning", "recompute_branches",
                              " keeps no adapter inputs: it cannot be combined with "
                              "saved_input_dtype")
        if not 0 < self.hidden_ratio <= 4:
            raise OptionError("E3VATuning", "hidden_ratio",
                              f" must be in (0, 4], got {self.hidden_ratio}")
        default_ratio = type(self).hidden_ratio
        if self.hidden_dim is not None and self.hidden_ratio != default_ratio:
            raise OptionError(
                "E3VATuning", "hidden_dim",
                f"={self.hidden_dim} and hidden_ratio={self.hidden_ratio} both set the adapters' "
                f"width; set one: hidden_dim (a fixed width) or hidden_ratio (a fraction of each "
                f"stage's channels; default {default_ratio})")
        owner = type(self).__name__
        if self.feedback_lora and not self.feedback_depth:
            raise OptionError(owner, "feedback_lora", " needs feedback_depth >= 1: LoRA goes "
                              "into the feedback blocks only, and there are none")
        if self.feedback_lora and self.trunk_dtype is not None:
            raise OptionError(owner, "feedback_lora",
                              f" cannot be combined with trunk_dtype={self.trunk_dtype!r}: its "
                              "trainable weights would run inside the narrowed blocks; set "
                              "trunk_dtype=None")

    def bottleneck_width(self, dim: int) -> int:
        """The adapters' middle width for ``dim`` channels; at least 1, or a clear error."""
        width = self.hidden_dim if self.hidden_dim is not None else int(dim * self.hidden_ratio)
        if width < 1:
            raise ValueError(
                f"E3VATuning.hidden_ratio={self.hidden_ratio} leaves the {dim}-channel stage an "
                f"adapter of width {width}; use hidden_ratio >= {1 / dim:.4g} or set hidden_dim")
        return width

    def attach(self, trunk):
        if self.trunk_dtype is not None:
            narrow_trunk_blocks(trunk, TRUNK_DTYPES[self.trunk_dtype])
        highway = self.build_highway(trunk)
        if self.feedback_lora:  # drawn after the highway, whose weights stay every seed's
            blocks = nn.ModuleList(feedback_blocks(trunk, self.feedback_depth))
            insert_into_blocks(blocks, lambda dim: lora_branch(dim, LoRATuning.rank))
        return highway

    def hidden_dims(self, trunk) -> List[int]:
        """The adapters' bottleneck width per stage of ``trunk``."""
        return [self.bottleneck_width(d) for d in trunk.num_features[: trunk.num_stages]]

    def build_highway(self, trunk) -> E3VAHighway:
        """The highway beside ``trunk`` (already narrowed to ``trunk_dtype``)."""
        return E3VAHighway(
            trunk,
            rank=self.rank,
            hidden_dims=self.hidden_dims(trunk),
            init=self.init,
            adapter_kind=self.adapter_kind,
            structure=self.structure,
            zero_init=self.zero_init,
            recompute=self.recompute_adapters,
            saved_dtype=self.adapter_saved_dtype(),
            trainable_downsampling=self.trainable_downsampling,
            recompute_branches=self.recompute_branches,
            feedback_depth=self.feedback_depth,
        )

    def adapter_saved_dtype(self) -> Optional[torch.dtype]:
        """The dtype adapters keep their inputs in: ``saved_input_dtype``, or a narrowed
        trunk's own dtype (exact: its branches widened and narrowed again are unchanged)."""
        saved, trunk = SAVED_INPUT_DTYPES[self.saved_input_dtype], TRUNK_DTYPES[self.trunk_dtype]
        if not self.recompute_adapters:
            return None  # without recomputation they keep their internals, widened, anyway
        if saved is None or (trunk is not None and trunk.itemsize < saved.itemsize):
            return trunk
        return saved

    def trainable_parameters(self, trunk, highway):
        for name, param in highway.named_parameters():
            yield HIGHWAY_PREFIX + name, param
        if self.feedback_lora:
            yield from inserted_parameters(trunk)
        if self.train_output_norms:
            yield from output_norm_parameters(trunk)

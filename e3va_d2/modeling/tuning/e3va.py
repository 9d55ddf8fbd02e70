"""E3VA: adapters on a highway beside the frozen trunk (the paper's method and its ablations)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..adapters import ADAPTER_INITS, ADAPTER_KINDS, HIGHWAY_STRUCTURES
from ..branch_recompute import RECOMPUTE_BRANCHES
from ..highway import HIGHWAY_PREFIX, E3VAHighway
from ..trunk_precision import TRUNK_DTYPES, narrow_trunk_blocks
from .base import OptionError, TuningMethod, option, output_norm_parameters, register_tuning

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
        return E3VAHighway(
            trunk,
            rank=self.rank,
            hidden_dims=[self.bottleneck_width(d) for d in trunk.num_features[: trunk.num_stages]],
            init=self.init,
            adapter_kind=self.adapter_kind,
            structure=self.structure,
            zero_init=self.zero_init,
            recompute=self.recompute_adapters,
            saved_dtype=self.adapter_saved_dtype(),
            trainable_downsampling=self.trainable_downsampling,
            recompute_branches=self.recompute_branches,
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
        if self.train_output_norms:
            yield from output_norm_parameters(trunk)

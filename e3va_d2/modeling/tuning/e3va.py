"""E3VA: adapters on a highway beside the frozen trunk (the paper's method and its ablations)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..branch_recompute import RECOMPUTE_BRANCHES
from ..e3va import ADAPTER_INITS, ADAPTER_KINDS, HIGHWAY_STRUCTURES, E3VAHighway
from ..side import SIDE_PREFIX
from ..trunk_precision import TRUNK_DTYPES, narrow_trunk_blocks
from .base import TuningMethod, check_positive_int, output_norm_parameters, register_tuning

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
    hidden_dim: a fixed bottleneck width instead (Table 5's standard adapter uses 32).
    init: how the dual low-rank factors are drawn; the paper says only "Kaiming Norm".
        "lorand" (default): the same lab's released LoRand code (kaiming_uniform_ with
        a=sqrt(5) over its (in, r) / (r, out) factor layout; adapters start at about a tenth
        of their input). "kaiming_fan_in": Kaiming normal over each factor's own fan-in (this
        project's first reading; adapters start several times larger than their input).
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
        them, unless saved_input_dtype is narrower). Lossy: the trunk's features are rounded.
    """

    trunk_runs_without_grad = True

    rank: int = 8
    hidden_ratio: float = 0.5
    hidden_dim: Optional[int] = None
    init: str = "lorand"
    adapter_kind: str = "dual_low_rank"
    structure: str = "parallel"
    zero_init: bool = False
    recompute_adapters: bool = True
    saved_input_dtype: Optional[str] = None
    trainable_downsampling: bool = False
    train_output_norms: bool = True
    recompute_branches: Optional[str] = None
    trunk_dtype: Optional[str] = None

    def __post_init__(self):
        if self.init not in ADAPTER_INITS:
            raise ValueError(f"E3VATuning.init={self.init!r}; expected one of {ADAPTER_INITS}")
        if self.adapter_kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter_kind={self.adapter_kind!r}; expected one of {ADAPTER_KINDS}")
        if self.structure not in HIGHWAY_STRUCTURES:
            raise ValueError(f"structure={self.structure!r}; expected one of {HIGHWAY_STRUCTURES}")
        if self.saved_input_dtype not in SAVED_INPUT_DTYPES:
            raise ValueError(f"E3VATuning.saved_input_dtype={self.saved_input_dtype!r}; expected "
                             f"one of {sorted(SAVED_INPUT_DTYPES, key=str)}")
        if self.saved_input_dtype is not None and not self.recompute_adapters:
            raise ValueError("E3VATuning.saved_input_dtype needs recompute_adapters=True (without "
                             "it backward keeps the adapters' internals too, at full width)")
        if self.recompute_branches not in RECOMPUTE_BRANCHES:
            raise ValueError(f"E3VATuning.recompute_branches={self.recompute_branches!r}; "
                             f"expected one of {RECOMPUTE_BRANCHES}")
        if self.recompute_branches is not None and self.saved_input_dtype is not None:
            raise ValueError("E3VATuning.recompute_branches keeps no adapter inputs: it cannot "
                             "be combined with saved_input_dtype")
        if self.trunk_dtype not in TRUNK_DTYPES:
            raise ValueError(f"E3VATuning.trunk_dtype={self.trunk_dtype!r}; expected one of "
                             f"{sorted(TRUNK_DTYPES, key=str)}")
        check_positive_int("E3VATuning.rank", self.rank)
        if self.hidden_dim is not None:
            check_positive_int("E3VATuning.hidden_dim", self.hidden_dim)
        if isinstance(self.hidden_ratio, bool) or not isinstance(self.hidden_ratio, (int, float)):
            raise ValueError(f"E3VATuning.hidden_ratio must be a number, got {self.hidden_ratio!r}")
        if not 0 < self.hidden_ratio <= 4:
            raise ValueError(f"E3VATuning.hidden_ratio must be in (0, 4], got {self.hidden_ratio}")

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

    def trainable_parameters(self, trunk, side):
        for name, param in side.named_parameters():
            yield SIDE_PREFIX + name, param
        if self.train_output_norms:
            yield from output_norm_parameters(trunk)

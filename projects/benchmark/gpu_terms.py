"""What a GPU holds beyond the step peak the planner measures, each a named physical quantity.

The planner measures the peak of the tensors one training step allocates (on CPU from the
profiler's allocation events, on CUDA the allocator's ``max_memory_allocated``). A card holds
more, and a published "training memory" may count some of it:

- ``workspace``: cuBLAS's workspace, allocated through PyTorch's caching allocator (so inside
  ``max_memory_allocated``): ``CUBLAS_WORKSPACE_CONFIG``'s default ``:4096:2:16:8`` is
  2 x 4 MiB + 8 x 16 KiB per stream, about 8 MiB (Hopper: ``:4096:8``, 32 MiB). cuDNN's
  convolution workspaces are transient, chosen per call by its heuristics, and not modelled:
  no GPU has measured them here (``make gpu-check`` records the allocator's peak on CUDA).
- ``ddp_gradient_copy``: with DistributedDataParallel and ``gradient_as_bucket_view=False``
  (torch's default, and detectron2 0.6's and mmdetection's), DDP's communication buckets hold
  a second copy of every trainable gradient for the whole backward pass: 4 bytes per trainable
  fp32 parameter, inside ``max_memory_allocated``. With ``gradient_as_bucket_view=True`` the
  gradients are views of the buckets and the copy is gone; on one GPU there is no DDP.
- ``allocator_slack``: the caching allocator's reserve above what is allocated at the peak
  (``memory_reserved / max_memory_allocated - 1``): blocks cached for sizes no longer asked for
  (variable image sizes: multi-scale training), 2 MiB rounding of large blocks, splits that
  cannot be reused. Outside ``max_memory_allocated``, inside what the card must hold.
- ``cuda_context``: the CUDA context (the driver's state and the kernels of torch, cuBLAS and
  cuDNN loaded on the device): about 0.3-0.5 GB with CUDA's lazy module loading (CUDA >= 11.7),
  more with eager loading on older CUDA. Outside the allocator, inside what the card must hold.

So ``allocated = step peak + workspace + ddp copy`` is what a ``max_memory_allocated`` figure
(the paper's, or ``nvidia-smi``-free logs) would show, and ``need = allocated * (1 + slack) +
context`` is what the card must have.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

FP32_BYTES = 4


@dataclass(frozen=True)
class GpuTerms:
    """The named terms (bytes, and the slack as a fraction of the allocated peak)."""

    workspace: int = 8 * 2**20
    ddp_gradient_copy: bool = False
    allocator_slack: float = 0.10
    cuda_context: int = 2**29

    def ddp_copy_bytes(self, trainable_parameters: int) -> int:
        return FP32_BYTES * trainable_parameters if self.ddp_gradient_copy else 0

    def allocated(self, step_peak: float, trainable_parameters: int) -> float:
        """What the allocator's ``max_memory_allocated`` would read for this step."""
        return step_peak + self.workspace + self.ddp_copy_bytes(trainable_parameters)

    def need(self, step_peak: float, trainable_parameters: int) -> float:
        """What the card must hold: the allocated peak, the allocator's reserve, the context."""
        return (self.allocated(step_peak, trainable_parameters) * (1 + self.allocator_slack)
                + self.cuda_context)

    def largest_step_peak(self, capacity: float, trainable_parameters: int) -> float:
        """The largest step peak that still fits a card of ``capacity`` bytes."""
        return ((capacity - self.cuda_context) / (1 + self.allocator_slack)
                - self.workspace - self.ddp_copy_bytes(trainable_parameters))

    def slack_to_fill(self, capacity: float, step_peak: float, trainable: int) -> float:
        """The allocator slack at which this step would exactly fill the card (the margin of a
        verdict: a "fits" holds for any slack below it)."""
        return (capacity - self.cuda_context) / self.allocated(step_peak, trainable) - 1

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"+ {self.workspace / 2**20:.0f} MiB cuBLAS workspace"
                + (", + DDP's gradient copy (4 B per trainable parameter)"
                   if self.ddp_gradient_copy else "")
                + f"; card: x {1 + self.allocator_slack:.2f} allocator slack + "
                f"{self.cuda_context / 2**30:.2f} GiB CUDA context")

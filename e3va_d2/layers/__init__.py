from .bottleneck import recomputed_bottleneck
from .norms import adapt_sync_batchnorm

__all__ = ["adapt_sync_batchnorm", "recomputed_bottleneck"]

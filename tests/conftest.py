"""Shared test settings: tiny Swins that run in milliseconds on CPU."""
import os

import pytest
import torch

# Keep tests on the 2 CPU cores without oversubscription from intra-op threads of 2 workers.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


@pytest.fixture
def tiny_swin_kwargs():
    return dict(TINY_SWIN)

"""The accuracy study's third regime, "dense": the far regime's recipe
(``accuracy_far_mask_rcnn_swin.py``) on other data, fixed on 2026-12-06 before any of its runs.

Why: every conclusion of the study rested on near and far, which share their image sizes,
object sizes (a side of 0.12-0.45 of the image's) and counts (1-4), and differ only in the fill.
Here 3-8 objects of a side of 0.08-0.25 of the image's (``DEFAULT_SPLITS["dense_*"]``), filled
with dots on a lattice or rings about their centre whose mean colour matches their
surroundings (``fill="dots_rings"``): other sizes, other counts and other textures, on the same
8,192 training and 512 held-out images of 96-128 px, so a run costs what the others cost.
The textures are ones the glyph pre-text drew (it kept out only far's fine stripes and checks)
but colour-matched, as far's are, so what the frozen trunk holds lies between near's and far's;
and small, crowded objects are found mostly on the high-resolution levels, where feeding the
highway back into the trunk's last blocks (issue 37) acts least: a regime that can tell a
gain from that feedback from a gain on one dataset's statistics.
"""
from .accuracy_far_mask_rcnn_swin import dataloader, lr_multiplier, model, optimizer, train  # noqa

dataloader.train.dataset.names = "shapes_dense_train"
dataloader.test.dataset.names = "shapes_dense_val"  # the held-out test; "_select" validates
train.output_dir = "./output/accuracy/dense"

"""The accuracy study's "near" regime: as the far one (``accuracy_far_mask_rcnn_swin.py``), on
objects of solid colour, whose features a trunk pre-trained on solid, outlined and textured
glyphs already holds."""
from .accuracy_far_mask_rcnn_swin import dataloader, lr_multiplier, model, optimizer, train  # noqa

dataloader.train.dataset.names = "shapes_near_train"
dataloader.test.dataset.names = "shapes_near_val"
train.output_dir = "./output/accuracy/near"

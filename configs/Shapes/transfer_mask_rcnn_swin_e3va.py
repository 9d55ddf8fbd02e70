"""The recipe the accuracy study's regimes build on (``accuracy_far_mask_rcnn_swin.py``, which
sets the trunk, the splits and the schedule): the Mask R-CNN demo, one learning rate for every
tuning method. As it stands, on the ``shapes_texture`` splits (512 training images of 96-128
px, 128 held out) for 300 iterations from the first trunk, it is the first comparison's recipe
(docs/ACCURACY.md, "The first comparison"; its table is in git history at 074435d).

The objects of these splits are filled with fine stripes or checks whose mean colour matches
their surroundings; the first trunk was pre-trained on solid glyphs over textured (coarse
stripes, checks) backgrounds, so its features must be adapted: on the solid-filled
``shapes_transfer`` splits a frozen trunk came close to full fine-tuning, on these it did not.

A run swaps only the tuning method (``projects/transfer/run_executor.py``); anything else set
here is shared by every method, as the paper's appendix shares one recipe per task.
"""
from e3va_d2.model_zoo import GLYPHS_SWIN

from .mask_rcnn_swin_demo_e3va import dataloader, lr_multiplier, model, optimizer, train  # noqa

# The first shipped trunk, with which the first comparison was measured; the study's regimes
# and the demos start from the scenes trunk (same architecture).
model.backbone.bottom_up.weights = GLYPHS_SWIN.url

dataloader.train.dataset.names = "shapes_texture_train"
dataloader.test.dataset.names = "shapes_texture_val"
# At most 20 detections per image (detectron2: 100): the images hold 1-4 shapes, so COCO AP is
# the same in practice, and evaluating 128 images stays a few seconds, not minutes (pasting 100
# masks per image is the slowest part of CPU inference).
model.roi_heads.box_predictor.test_topk_per_image = 20
train.max_iter = 300
train.checkpointer.period = 100000  # only the final model (a run needs no others)
train.log_period = 20
train.output_dir = "./output/transfer/mask_rcnn_swin_e3va"

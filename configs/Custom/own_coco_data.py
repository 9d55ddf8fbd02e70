"""Your own COCO-format dataset in one config: name its json, its image folder and the shipped
config to train (docs/DATA.md walks through it end to end). The model's class count is the
number of categories in the json; the run writes to ./output/<json's stem>/<config's stem>.

    python train_net.py --config-file configs/Custom/own_coco_data.py

Copy this file anywhere: the shipped config is found by name (e3va_d2.config.get_config).
Relative paths are read from the working directory.
"""
from e3va_d2.config import coco_json_config

_cfg = coco_json_config(
    json="mydata/train.json",  # COCO instances json: images, annotations, categories
    image_root="mydata/images",  # the folder its images' file_name are relative to
    config="Shapes/mask_rcnn_swin_demo_e3va.py",  # any shipped detector config, or a file
    test_json="mydata/val.json",  # optional: held-out images (default: the training json)
)
model, dataloader, optimizer, lr_multiplier, train = (
    _cfg.model, _cfg.dataloader, _cfg.optimizer, _cfg.lr_multiplier, _cfg.train)

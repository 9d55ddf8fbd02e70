"""The synthetic shapes in Pascal VOC layout, for the RetinaNet / VOC-evaluation demo.

Why: ``PascalVOCDetectionEvaluator`` does not take dataset dicts, it re-reads VOC files
(``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``), so the VOC pipeline can only be
exercised end to end on data that exists in that layout. Each shapes split (COCO json + images,
see :mod:`.shapes`) is exported once, next to it in the cache::

    shapes-v1-<hash>-voc1/
        JPEGImages/000000.jpg      copies of the shapes images
        Annotations/000000.xml     name, pose, truncated=0, difficult=0, integer bndbox
        ImageSets/Main/<split>.txt one image id per line
        COMPLETE                   written last; the folder appears (atomic rename) complete

Boxes follow the VOC convention that detectron2 reads back: 1-based inclusive pixel indices,
so a COCO box ``[x, y, w, h]`` becomes ``xmin=x+1, ymin=y+1, xmax=x+w, ymax=y+h`` and
``load_voc_instances`` (which subtracts 1 from xmin/ymin) returns exactly ``[x, y, x+w, y+h]``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.structures import BoxMode

from .cache import build_folder_once
from .datasets import DatasetError
from .shapes import (
    DEFAULT_SPLITS,
    THING_CLASSES,
    ShapesSpec,
    cache_root,
    ensure_shapes_split,
    register_lazily,
    shapes_folder_name,
)

__all__ = [
    "voc_folder_name",
    "export_voc",
    "ensure_shapes_voc_split",
    "load_voc_dicts",
    "register_shapes_voc",
]


# Bump when the exported files change: old exports are then never reused.
_VOC_VERSION = 1


def voc_folder_name(spec: ShapesSpec) -> str:
    """The export of a split is named after its source folder, so it follows every change."""
    return f"{shapes_folder_name(spec)}-voc{_VOC_VERSION}"


def _xml(file_name: str, width: int, height: int, objects: Sequence[Tuple[str, List[int]]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        # The evaluator's parse_rec reads pose, truncated and difficult (and int() the box).
        for key, value in (("name", name), ("pose", "Unspecified"), ("truncated", "0")):
            ET.SubElement(obj, key).text = value
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _voc_box(bbox: Sequence[float], where: str) -> List[int]:
    """COCO ``[x, y, w, h]`` (pixel edges) -> VOC 1-based inclusive ``[xmin, ymin, xmax, ymax]``."""
    x, y, w, h = bbox
    if not all(float(v).is_integer() for v in bbox):
        raise DatasetError(f"{where}: bbox {list(bbox)} is not on pixel edges; VOC needs integers")
    return [int(x) + 1, int(y) + 1, int(x + w), int(y + h)]


def export_voc(
    json_file: str, image_root: str, folder: str, split: str, class_names: Sequence[str]
) -> List[str]:
    """Write a COCO-format detection split into ``folder`` in VOC layout; returns the image ids.

    Image ids are the image file stems. Only the marker is left to the caller, which decides
    when the folder counts as complete.
    """
    with open(json_file) as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    unknown = sorted(set(names.values()) - set(class_names))
    if unknown:
        raise DatasetError(f"'{json_file}' has categories {unknown} not in {list(class_names)}")
    objects: Dict[int, List[Tuple[str, List[int]]]] = {im["id"]: [] for im in coco["images"]}
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        box = _voc_box(ann["bbox"], f"'{json_file}' annotation {ann['id']}")
        objects[ann["image_id"]].append((names[ann["category_id"]], box))

    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    ids = []
    for im in sorted(coco["images"], key=lambda im: im["file_name"]):
        stem, ext = os.path.splitext(im["file_name"])
        if ext.lower() != ".jpg" or os.sep in stem or "/" in stem:
            raise DatasetError(f"VOC needs flat '<id>.jpg' image names, got '{im['file_name']}'")
        shutil.copyfile(
            os.path.join(image_root, im["file_name"]),
            os.path.join(folder, "JPEGImages", stem + ".jpg"),
        )
        text = _xml(stem + ".jpg", im["width"], im["height"], objects[im["id"]])
        with open(os.path.join(folder, "Annotations", stem + ".xml"), "w") as f:
            f.write(text)
        ids.append(stem)
    with open(os.path.join(folder, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("".join(i + "\n" for i in ids))
    return ids


def ensure_shapes_voc_split(spec: ShapesSpec, split: str, *, root: Optional[str] = None) -> str:
    """The VOC folder (``dirname``) of a shapes split, exporting it first if needed.

    Safe with several processes at once, like ``ensure_shapes_split``: each exports into its
    own temp folder and renames it into place; a loser discards its copy and uses the winner's.
    """
    root = cache_root(root)

    def write(folder: str) -> None:
        source = ensure_shapes_split(spec, root=root)
        export_voc(source.json_file, source.image_root, folder, split, THING_CLASSES)

    final = build_folder_once(root, voc_folder_name(spec), write, "shapes VOC export")
    _check_split(final, split)
    return final


def _check_split(folder: str, split: str) -> None:
    if not os.path.isfile(os.path.join(folder, "ImageSets", "Main", split + ".txt")):
        raise DatasetError(
            f"VOC export '{folder}' has no split '{split}' (one folder holds one split); "
            "register each split with its own ShapesSpec."
        )


def load_voc_dicts(dirname: str, split: str, class_names: Sequence[str]) -> List[dict]:
    """The dicts of detectron2's ``load_voc_instances`` (equality is tested).

    Own reader because v0.6's needs ``np.str`` (gone since NumPy 1.24) and reads a one-line
    split file as a 0-d array it cannot iterate.
    """
    with open(os.path.join(dirname, "ImageSets", "Main", split + ".txt")) as f:
        ids = [line.strip() for line in f if line.strip()]
    dicts = []
    for fileid in ids:
        tree = ET.parse(os.path.join(dirname, "Annotations", fileid + ".xml"))
        instances = []
        for obj in tree.findall("object"):
            box = [float(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            box[0] -= 1.0  # 1-based inclusive indices -> pixel edges, as detectron2 reads them
            box[1] -= 1.0
            instances.append(
                {
                    "category_id": list(class_names).index(obj.find("name").text),
                    "bbox": box,
                    "bbox_mode": BoxMode.XYXY_ABS,
                }
            )
        dicts.append(
            {
                "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
                "image_id": fileid,
                "height": int(tree.find("size/height").text),
                "width": int(tree.find("size/width").text),
                "annotations": instances,
            }
        )
    return dicts


def _load(spec: ShapesSpec, root: str, split: str) -> List[dict]:
    dirname = ensure_shapes_voc_split(spec, split, root=root)
    return load_voc_dicts(dirname, split, THING_CLASSES)


def register_shapes_voc(
    root: Optional[str] = None,
    *,
    splits: Optional[Mapping[str, ShapesSpec]] = None,
    prefix: str = "shapes_voc",
    force: bool = False,
) -> List[str]:
    """Register ``{prefix}_{split}`` as ``register_pascal_voc(name, dirname, split, 2007,
    THING_CLASSES)`` would, but lazily: files are exported when the dataset is first loaded.

    ``PascalVOCDetectionEvaluator`` reads the files named by the metadata (``dirname``,
    ``split``), so build the test loader before evaluating (``E3VATrainer.test`` does).
    Names already registered are left alone unless ``force=True``. Returns the names.
    """
    root = cache_root(root)
    names = []
    for split, spec in (splits if splits is not None else DEFAULT_SPLITS).items():
        name = f"{prefix}_{split}"
        names.append(name)
        metadata = dict(
            thing_classes=list(THING_CLASSES),
            dirname=os.path.join(root, voc_folder_name(spec)),
            year=2007,  # -> the VOC2007 11-point AP in PascalVOCDetectionEvaluator
            split=split,
            evaluator_type="pascal_voc",
            generated_on_demand=True,
        )
        register_lazily(name, functools.partial(_load, spec, root, split), metadata, force=force)
    return names

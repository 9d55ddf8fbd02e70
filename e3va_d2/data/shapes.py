"""Deterministic synthetic "shapes" dataset (rectangles, ellipses, triangles).

Why: smoke-tests, CI and tutorials need a detection/segmentation dataset that exists everywhere,
is tiny, exercises padding (odd image sizes), occlusion and all three annotation types (boxes,
instance masks, semantic maps), and is byte-identical on every run. It is rendered once into a
cache folder in standard COCO format, so every Detectron2 tool (``load_coco_json``,
``COCOEvaluator``, ``SemSegEvaluator``) consumes it unchanged.

Cache layout (``$E3VA_D2_DATASETS``, default ``~/.cache/e3va_d2/datasets``)::

    shapes-v1-<hash of ShapesSpec>/
        annotations.json   COCO instances; masks as RLE of the *visible* region
        images/000000.jpg  RGB images
        sem_seg/000000.png uint8 label maps: 0 = background, 1..3 = THING_CLASSES
        COMPLETE           written last; the folder only appears (atomic rename) once complete

Instance masks are RLE (exact, and able to express holes/fragments caused by occlusion), so
training configs must use ``instance_mask_format="bitmask"`` for these datasets.

The spec is :mod:`.shapes_spec`, drawing :mod:`.shapes_render`; this module owns the named
splits, the cache folders and the catalog registration of the COCO and label-map views.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .cache import MARKER, build_folder_once
from .datasets import DatasetError
from .shapes_render import render as _render  # a module global: tests slow it down
from .shapes_spec import THING_CLASSES, ShapesSpec

__all__ = [
    "THING_CLASSES",
    "THING_COLORS",
    "STUFF_CLASSES",
    "IGNORE_LABEL",
    "DEFAULT_SPLITS",
    "ShapesSpec",
    "ShapesPaths",
    "default_cache_root",
    "shapes_folder_name",
    "generate_shapes",
    "ensure_shapes_split",
    "register_shapes",
]


# Bump when the rendering or file format changes: old caches are then never reused.
_VERSION = 1
THING_COLORS: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 200), (60, 180, 75))
STUFF_CLASSES: Tuple[str, ...] = ("background",) + THING_CLASSES
IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class ShapesPaths:
    """Where a generated split lives."""

    root: str
    json_file: str
    image_root: str
    sem_seg_root: str


_DENSE = dict(min_size=96, max_size=128, min_objects=3, max_objects=8, object_scale=(0.08, 0.25),
              fill="dots_rings")
DEFAULT_SPLITS: Dict[str, ShapesSpec] = {
    "train": ShapesSpec(num_images=256, seed=0),
    "val": ShapesSpec(num_images=64, seed=1),
    # The first accuracy comparison (configs/Shapes/transfer_mask_rcnn_swin_e3va.py): more,
    # smaller images, so that a run of a few hundred steps is short and the trunk's features,
    # not the 256 images, limit accuracy.
    "transfer_train": ShapesSpec(num_images=512, seed=4, min_size=96, max_size=128,
                                 max_objects=4),
    "transfer_val": ShapesSpec(num_images=128, seed=5, min_size=96, max_size=128, max_objects=4),
    "texture_train": ShapesSpec(num_images=512, seed=6, min_size=96, max_size=128,
                                max_objects=4, fill="texture"),
    "texture_val": ShapesSpec(num_images=128, seed=7, min_size=96, max_size=128, max_objects=4,
                              fill="texture"),
    # The accuracy study's two regimes (projects/transfer/study.py, docs/ACCURACY.md): 8,192
    # training images each, so that no method can merely memorise them, 512 held out. "near":
    # solid objects, whose features a trunk pre-trained on solid glyphs already has; "far":
    # objects set apart by fine stripes or checks, which the pre-text never taught.
    "near_train": ShapesSpec(num_images=8192, seed=10, min_size=96, max_size=128, max_objects=4),
    "near_val": ShapesSpec(num_images=512, seed=11, min_size=96, max_size=128, max_objects=4),
    "far_train": ShapesSpec(num_images=8192, seed=12, min_size=96, max_size=128, max_objects=4,
                            fill="texture"),
    "far_val": ShapesSpec(num_images=512, seed=13, min_size=96, max_size=128, max_objects=4,
                          fill="texture"),
    # Each regime's validation split, to choose options on (the "_val" splits above are the
    # held-out test, named before there was a choice to make): 512 new images of the regime's
    # training distribution. Image i of a split is drawn from np.random.default_rng([seed, i])
    # alone, so splits with different seeds share no generator stream: every split of the study
    # has a seed of its own (10-13 near and far, train and test; 14-15 their validation; 16-18
    # the third regime's train, test and validation), which tests/test_accuracy_study.py checks.
    "near_select": ShapesSpec(num_images=512, seed=14, min_size=96, max_size=128, max_objects=4),
    "far_select": ShapesSpec(num_images=512, seed=15, min_size=96, max_size=128, max_objects=4,
                             fill="texture"),
    # The study's third regime, "dense" (fixed 2026-12-06, before any of its runs;
    # configs/Shapes/accuracy_dense_mask_rcnn_swin.py says why): 3-8 smaller objects (a side
    # of 0.08-0.25 of the image's, the others' 0.12-0.45), filled with dots or rings matched to
    # their surroundings' mean colour.
    "dense_train": ShapesSpec(num_images=8192, **_DENSE, seed=16),
    "dense_val": ShapesSpec(num_images=512, **_DENSE, seed=17),
    "dense_select": ShapesSpec(num_images=512, **_DENSE, seed=18),
    # Small splits for smoke tests (the test suite trains and evaluates on these).
    "mini_train": ShapesSpec(num_images=48, seed=2),
    "mini_val": ShapesSpec(num_images=16, seed=3),
}

# dataset name -> (spec, cache root), filled by register_shapes()
_REGISTERED: Dict[str, Tuple[ShapesSpec, str]] = {}


def default_cache_root() -> str:
    """``$E3VA_D2_DATASETS`` or ``~/.cache/e3va_d2/datasets``, made absolute."""
    return cache_root(os.environ.get("E3VA_D2_DATASETS") or "~/.cache/e3va_d2/datasets")


def cache_root(root: Optional[str]) -> str:
    """``root`` made absolute (``~`` expanded), or the default root when it is empty."""
    return os.path.abspath(os.path.expanduser(root)) if root else default_cache_root()


_LATER_DEFAULTS = {"fill": "solid", "object_scale": (0.12, 0.45)}


def shapes_folder_name(spec: ShapesSpec) -> str:
    """Folder name holding the format version and a short hash of all generation parameters."""
    params = dataclasses.asdict(spec)
    # Parameters added later leave out their defaults, which draw what was drawn before they
    # existed: the folders of the earlier splits keep their names.
    for name, default in _LATER_DEFAULTS.items():
        if params[name] == default:
            del params[name]
    key = json.dumps({"version": _VERSION, **params}, sort_keys=True)
    return f"shapes-v{_VERSION}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _paths(folder: str) -> ShapesPaths:
    return ShapesPaths(
        root=folder,
        json_file=os.path.join(folder, "annotations.json"),
        image_root=os.path.join(folder, "images"),
        sem_seg_root=os.path.join(folder, "sem_seg"),
    )


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _annotations(
    owner: np.ndarray, objects: List[Tuple[int, int]], image_id: int, next_id: int
) -> List[dict]:
    """COCO annotations (RLE of visible masks, tight XYWH boxes, pixel areas) for one image."""
    import pycocotools.mask as mask_util

    anns = []
    for j, (cls, area) in enumerate(objects):
        mask = owner == j
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        anns.append(
            {
                "id": next_id + len(anns),
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": int(area),
                "iscrowd": 0,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
            }
        )
    return anns


def generate_shapes(spec: ShapesSpec, folder: str) -> None:
    """Write a complete split into an (empty or new) ``folder``; the marker file comes last."""
    from PIL import Image

    paths = _paths(folder)
    os.makedirs(paths.image_root, exist_ok=True)
    os.makedirs(paths.sem_seg_root, exist_ok=True)
    images, annotations = [], []
    for index in range(spec.num_images):
        image, owner, objects = _render(spec, index)
        h, w = owner.shape
        stem = f"{index:06d}"
        Image.fromarray(image).save(
            os.path.join(paths.image_root, stem + ".jpg"), format="JPEG", quality=95, subsampling=0
        )
        lut = np.asarray([0] + [cls + 1 for cls, _ in objects], dtype=np.uint8)  # owner -> label
        sem = lut[owner.astype(np.int64) + 1]
        Image.fromarray(sem, mode="L").save(
            os.path.join(paths.sem_seg_root, stem + ".png"), format="PNG", compress_level=6
        )
        images.append({"id": index + 1, "file_name": stem + ".jpg", "height": h, "width": w})
        annotations += _annotations(owner, objects, index + 1, len(annotations) + 1)
    coco = {
        "info": {
            "description": "e3va-d2 synthetic shapes",
            "version": str(_VERSION),
            "spec": dataclasses.asdict(spec),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(THING_CLASSES)
        ],
    }
    with open(paths.json_file, "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    with open(os.path.join(folder, MARKER), "w") as f:
        json.dump({"version": _VERSION, **dataclasses.asdict(spec)}, f, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Cache management
# ----------------------------------------------------------------------------------------------


def _resolve(split: Union[str, ShapesSpec], root: Optional[str]) -> Tuple[ShapesSpec, str]:
    if isinstance(split, ShapesSpec):
        return split, cache_root(root)
    if split in _REGISTERED:
        spec, registered_root = _REGISTERED[split]
        return spec, cache_root(root) if root else registered_root
    short = split
    for prefix in ("shapes_sem_seg_", "shapes_"):
        if split.startswith(prefix):
            short = split[len(prefix) :]
            break
    if short in DEFAULT_SPLITS:
        return DEFAULT_SPLITS[short], cache_root(root)
    known = sorted(set(_REGISTERED) | {f"shapes_{s}" for s in DEFAULT_SPLITS})
    raise DatasetError(
        f"Unknown shapes split '{split}'. Known: {known}. Pass a ShapesSpec, or register a new "
        "split with e3va_d2.data.register_shapes(splits={'name': ShapesSpec(...)})."
    )


def ensure_shapes_split(
    split: Union[str, ShapesSpec] = "shapes_train", *, root: Optional[str] = None
) -> ShapesPaths:
    """Return the paths of a split, generating it first if it is not cached yet.

    ``split`` is a registered name (``shapes_val``, ``shapes_sem_seg_val``, ...), a short name
    (``"val"``) or a ``ShapesSpec``. Safe with several processes at once: each renders into its
    own temp folder next to the target and atomically renames it; losers discard their copy. A
    killed generation leaves only a temp folder, which is never mistaken for the dataset.
    """
    spec, root = _resolve(split, root)
    write = functools.partial(generate_shapes, spec)
    return _paths(build_folder_once(root, shapes_folder_name(spec), write, "shapes dataset"))


# ----------------------------------------------------------------------------------------------
# Detectron2 registration
# ----------------------------------------------------------------------------------------------


def _load_instances(name: str, spec: ShapesSpec, root: str) -> List[dict]:
    from detectron2.data.datasets import load_coco_json

    paths = ensure_shapes_split(spec, root=root)
    return load_coco_json(paths.json_file, paths.image_root, name)


def _load_sem_seg(spec: ShapesSpec, root: str) -> List[dict]:
    paths = ensure_shapes_split(spec, root=root)
    with open(paths.json_file) as f:
        images = json.load(f)["images"]
    return [
        {
            "file_name": os.path.join(paths.image_root, im["file_name"]),
            "sem_seg_file_name": os.path.join(
                paths.sem_seg_root, os.path.splitext(im["file_name"])[0] + ".png"
            ),
            "height": im["height"],
            "width": im["width"],
            "image_id": im["id"],
        }
        for im in images
    ]


def register_shapes(
    root: Optional[str] = None,
    *,
    splits: Optional[Mapping[str, ShapesSpec]] = None,
    prefix: str = "shapes",
    force: bool = False,
) -> List[str]:
    """Register ``{prefix}_{split}`` (instances) and ``{prefix}_sem_seg_{split}`` (semantic).

    Cheap: nothing is generated until ``DatasetCatalog.get`` (or ``ensure_shapes_split``) is
    called. The cache root is fixed now (``root`` or ``$E3VA_D2_DATASETS``) because the metadata
    ``json_file`` must be a concrete path for ``COCOEvaluator``. Names that are already
    registered are left alone unless ``force=True`` (e.g. after changing the env var).
    Returns the registered names.
    """
    root = cache_root(root)
    names = []
    for split, spec in (splits if splits is not None else DEFAULT_SPLITS).items():
        paths = _paths(os.path.join(root, shapes_folder_name(spec)))
        common = {"image_root": paths.image_root, "generated_on_demand": True}
        det_name, sem_name = f"{prefix}_{split}", f"{prefix}_sem_seg_{split}"
        entries = [
            (
                det_name,
                functools.partial(_load_instances, det_name, spec, root),
                dict(
                    common,
                    json_file=paths.json_file,
                    thing_classes=list(THING_CLASSES),
                    thing_colors=[list(c) for c in THING_COLORS],
                    thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(THING_CLASSES))},
                    evaluator_type="coco",
                ),
            ),
            (
                sem_name,
                functools.partial(_load_sem_seg, spec, root),
                dict(
                    common,
                    sem_seg_root=paths.sem_seg_root,
                    stuff_classes=list(STUFF_CLASSES),
                    stuff_colors=[[0, 0, 0]] + [list(c) for c in THING_COLORS],
                    ignore_label=IGNORE_LABEL,
                    evaluator_type="sem_seg",
                ),
            ),
        ]
        for name, loader, metadata in entries:
            names.append(name)
            if register_lazily(name, loader, metadata, force=force):
                _REGISTERED[name] = (spec, root)
    return names


def register_lazily(name: str, loader: Callable[[], List[dict]], metadata: dict, *,
                    force: bool) -> bool:
    """Put ``name`` in detectron2's catalogs (``loader`` runs on first ``DatasetCatalog.get``).

    A name already registered is left alone unless ``force``, which replaces both its loader and
    its metadata. Returns whether it was (re)registered.
    """
    if name in DatasetCatalog:
        if not force:
            return False
        DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    return True

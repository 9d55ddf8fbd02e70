"""Dataset loading with actionable errors, plus cheap validation of dataset dicts.

Why: Detectron2 fails late and cryptically on data problems (a ``KeyError`` for an unregistered
name, ``FileNotFoundError`` deep inside pycocotools, a ``JSONDecodeError`` with no file name, or
no error at all for relative boxes / off-by-one labels, which just train a useless model).
``load_dataset_dicts`` is a drop-in for ``get_detection_dataset_dicts`` that checks first and
names the problem and the fix::

    dataloader.train.dataset = L(load_dataset_dicts)(names="coco_2017_train")
    dataloader.train.dataset = L(load_sem_seg_dicts)(names="shapes_sem_seg_train")

The module (about 440 lines) is the checks of these two loaders and their messages; splitting
them from the loaders would separate each error from the only place that raises it.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.structures import BoxMode

__all__ = [
    "DatasetError",
    "load_dataset_dicts",
    "load_sem_seg_dicts",
    "validate_dataset_dicts",
    "check_image_files",
    "check_sem_seg_labels",
]

# Metadata keys that builtin/custom registrations use for on-disk inputs.
_PATH_KEYS = (
    "json_file",
    "image_root",
    "sem_seg_root",
    "panoptic_json",
    "panoptic_root",
    "image_dir",
    "gt_dir",
    "dirname",
)
_ABS_MODES = (int(BoxMode.XYXY_ABS), int(BoxMode.XYWH_ABS))
_ADE_HINT = (
    " ADE20K label maps (annotations_detectron2/) are created by detectron2's "
    "datasets/prepare_ade20k_sem_seg.py."
)
_README = "https://github.com/facebookresearch/detectron2/blob/main/datasets/README.md"


class DatasetError(ValueError):
    """A dataset is missing, unregistered or malformed; the message says how to fix it."""


def _as_list(names: Union[str, Sequence[str]]) -> List[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DatasetError("No dataset names given: pass names='coco_2017_train' or a list.")
    return names


def _check_registered(name: str) -> None:
    if name in DatasetCatalog:
        return
    registered = sorted(DatasetCatalog.keys())
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.5)
    hint = f" Did you mean {close}?" if close else ""
    raise DatasetError(
        f"Dataset '{name}' is not registered in detectron2's DatasetCatalog.{hint} "
        f"{len(registered)} datasets are registered, e.g. {registered[:8]}. Register custom "
        "COCO-format data before building the config, e.g. `from detectron2.data.datasets import "
        f"register_coco_instances; register_coco_instances('{name}', {{}}, "
        "'/path/to/annotations.json', '/path/to/images')`; `import e3va_d2.data` registers the "
        "synthetic 'shapes_train'/'shapes_val' splits."
    )


def _check_json_looks_complete(name: str, path: str) -> None:
    """Cheap truncation check (first/last non-blank byte) without parsing a huge file."""
    with open(path, "rb") as f:
        head = f.read(256).lstrip()
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - 256, 0))
        tail = f.read().rstrip()
    if not head or head[:1] not in (b"{", b"[") or tail[-1:] not in (b"}", b"]"):
        problem = "the file is empty" if not head else "it does not start/end like a JSON object"
        raise DatasetError(_bad_json_message(name, path, problem))


def _bad_json_message(name: str, path: str, problem: object) -> str:
    if name in MetadataCatalog and MetadataCatalog.get(name).get("generated_on_demand", False):
        fix = (f"e3va_d2 generated it, and its copy is damaged: delete the folder "
               f"{os.path.dirname(path)} and it is generated again when the dataset is next "
               "loaded")
    else:
        fix = ("It is probably truncated or corrupted (e.g. an interrupted download or unzip); "
               "re-download or re-extract it")
    return f"Dataset '{name}': annotation file '{path}' is not valid JSON ({problem}). {fix}."


def _check_paths(name: str) -> None:
    meta = MetadataCatalog.get(name)
    if meta.get("generated_on_demand", False):
        return  # e.g. the shapes splits: the loader creates the files
    for key in _PATH_KEYS:
        path = meta.get(key, None)
        if not isinstance(path, str) or not path:
            continue
        if not os.path.exists(path):
            env = os.environ.get("DETECTRON2_DATASETS")
            env_text = f"'{env}'" if env is not None else "unset, so it defaults to './datasets'"
            if env is not None and os.path.exists(env) and not os.path.isdir(env):
                env_text += ", which is a file, not a folder"
            raise DatasetError(
                f"Dataset '{name}': metadata {key} '{path}' does not exist (resolved from the "
                f"working directory '{os.getcwd()}' to '{os.path.abspath(path)}'). Builtin "
                "datasets (COCO, LVIS, ADE20K, ...) are looked up under $DETECTRON2_DATASETS "
                f"(currently {env_text}). Set DETECTRON2_DATASETS to the folder that contains "
                "e.g. coco/annotations/instances_train2017.json, laid out as described in "
                f"detectron2's datasets/README.md ({_README}), or re-register '{name}' with "
                f"the correct paths.{_ADE_HINT if key == 'sem_seg_root' else ''}"
            )
        if key in ("json_file", "panoptic_json") and os.path.isfile(path):
            _check_json_looks_complete(name, path)


def _locate_bad_json(names: List[str]) -> Optional[Tuple[str, str, ValueError]]:
    """After a JSONDecodeError, find which dataset's json is broken (error path only)."""
    for name in names:
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "panoptic_json"):
            path = meta.get(key, None)
            if isinstance(path, str) and os.path.isfile(path):
                try:
                    with open(path) as f:
                        json.load(f)
                except ValueError as err:
                    return name, path, err
    return None


def _num_thing_classes(dataset_name: str) -> Optional[int]:
    if dataset_name in MetadataCatalog:  # membership test does not create an entry
        classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        if classes is not None:
            return len(classes)
    return None


def load_dataset_dicts(
    names: Union[str, Sequence[str]],
    *,
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Optional[Sequence[str]] = None,
) -> List[dict]:
    """Checked drop-in for ``detectron2.data.get_detection_dataset_dicts``.

    Checks registration, on-disk paths and json integrity first, then loads, then runs
    ``validate_dataset_dicts``. Raises ``DatasetError`` with the cause and the fix.
    """
    names = _as_list(names)
    for name in names:
        _check_registered(name)
        _check_paths(name)
    try:
        dicts = get_detection_dataset_dicts(
            names,
            filter_empty=filter_empty,
            min_keypoints=min_keypoints,
            proposal_files=proposal_files,
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        found = _locate_bad_json(names)
        if found is None:
            raise DatasetError(f"Loading datasets {names} failed to parse JSON: {err}") from err
        raise DatasetError(_bad_json_message(*found)) from err
    except AssertionError as err:
        raise DatasetError(
            f"Loading datasets {names} failed: {err}. Check that the annotation files contain "
            "images with non-crowd annotations, or pass filter_empty=False for test sets."
        ) from err
    if isinstance(dicts, list):
        validate_dataset_dicts(
            dicts, dataset_name=",".join(names), num_classes=_num_thing_classes(names[0])
        )
        check_image_files(dicts, dataset_name=",".join(names))
    return dicts


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _where(dicts: List[dict], img: int, ann: Optional[int], dataset_name: str) -> str:
    d = dicts[img]
    text = f"Dataset '{dataset_name}': image '{d.get('file_name')}'"
    if "image_id" in d:
        text += f" (image_id={d['image_id']})"
    return text + (f", annotation #{ann}" if ann is not None else "")


def _is_positive_number(v: object) -> bool:
    if type(v) is int:  # fast path for the common case
        return v > 0
    return (
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, bool)
        and bool(np.isfinite(v))
        and v > 0
    )


def _float_boxes(boxes: list) -> np.ndarray:
    """(N, 4) float array; malformed entries (missing, wrong length, non-numeric) become NaN."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.shape == (len(boxes), 4):
            return arr
    except (TypeError, ValueError):
        pass
    out = np.full((len(boxes), 4), np.nan)
    for i, b in enumerate(boxes):
        try:
            row = np.asarray(b, dtype=np.float64).reshape(-1)
            if row.shape == (4,):
                out[i] = row
        except (TypeError, ValueError):
            pass
    return out


def _int_array(values: list) -> np.ndarray:
    """int64 array; anything that is not an integer value becomes -1 (invalid)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu" and arr.ndim == 1:
        return arr.astype(np.int64)
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[i] = int(v)
        elif isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            out[i] = int(v)
    return out


def _check_rle_sizes(dicts: List[dict], img: int, anns: List[dict], dataset_name: str) -> None:
    """An RLE mask's ``size`` must be the image's [height, width]: another size decodes to a
    mask of another shape, and training fails in a loader worker naming neither."""
    h, w = dicts[img].get("height"), dicts[img].get("width")
    for k, ann in enumerate(anns):
        segm = ann.get("segmentation")
        if isinstance(segm, dict) and "counts" in segm:
            size = segm.get("size")
            try:
                fits = [int(v) for v in size] == [int(h), int(w)]
            except (TypeError, ValueError):
                fits = False
            if not fits:
                raise DatasetError(
                    f"{_where(dicts, img, k, dataset_name)}: its RLE segmentation has size="
                    f"{size!r}, but the image is {h}x{w} (height x width): an RLE mask must "
                    f"have size [height, width] = [{h}, {w}]. Re-encode the mask at the image's "
                    "size (pycocotools.mask.encode of an HxW array), or fix the image's "
                    "height/width.")


def check_image_files(dicts: List[dict], *, dataset_name: str, show: int = 5) -> None:
    """Every ``file_name`` exists (one ``stat`` each): a missing image fails now, listing the
    first few and the count, not minutes into training inside a loader worker."""
    missing = [d["file_name"] for d in dicts
               if "file_name" in d and "://" not in d["file_name"]
               and not os.path.isfile(d["file_name"])]
    if missing:
        raise DatasetError(
            f"Dataset '{dataset_name}': {len(missing)} of {len(dicts)} image files do not exist, "
            f"e.g. {missing[:show]}. Check the image root of the registration (or "
            "DETECTRON2_DATASETS), or remove their entries from the annotations."
        )


def validate_dataset_dicts(
    dicts: List[dict], *, dataset_name: str, num_classes: Optional[int] = None
) -> None:
    """Fast structural checks of Detectron2 dataset dicts; raises ``DatasetError``.

    Checks image height/width, and for every annotation: an absolute ``bbox_mode``, finite boxes
    with non-negative size that touch the image, an RLE mask's ``size`` equal to the image's
    [height, width], and ``category_id`` in ``[0, num_classes)``
    (``num_classes`` defaults to the dataset's ``thing_classes``). Semantic-seg dicts must point
    to an existing ``sem_seg_file_name``. No image is read; annotations are checked vectorized.
    """
    if num_classes is None:
        num_classes = _num_thing_classes(dataset_name)
    counts: List[int] = []
    modes: list = []
    cats: list = []
    boxes: list = []
    nan_box = (np.nan,) * 4
    for i, d in enumerate(dicts):
        anns = d.get("annotations")
        h, w = d.get("height"), d.get("width")
        if anns is not None or h is not None or w is not None:
            if not (_is_positive_number(h) and _is_positive_number(w)):
                raise DatasetError(
                    f"{_where(dicts, i, None, dataset_name)}: height={h!r}, width={w!r}; dataset "
                    "dicts need the positive pixel 'height' and 'width' of the image file. Fix the "
                    "'images' entries of the json / your loader."
                )
        sem = d.get("sem_seg_file_name")
        if sem is not None and not os.path.isfile(sem):
            raise DatasetError(
                f"{_where(dicts, i, None, dataset_name)}: sem_seg_file_name '{sem}' does not "
                "exist. Check the sem_seg root of the registration / that the label maps were "
                "generated (for ADE20K: datasets/prepare_ade20k_sem_seg.py)."
            )
        anns = anns or []
        _check_rle_sizes(dicts, i, anns, dataset_name)
        counts.append(len(anns))
        modes.extend(a.get("bbox_mode", -1) for a in anns)
        cats.extend(a.get("category_id", -1) for a in anns)
        boxes.extend(a.get("bbox", nan_box) for a in anns)
    if not boxes:
        return
    counts_arr = np.asarray(counts, dtype=np.int64)
    img_of = np.repeat(np.arange(len(dicts)), counts_arr)
    ann_of = np.arange(len(boxes)) - np.repeat(np.cumsum(counts_arr) - counts_arr, counts_arr)

    def fail(bad: np.ndarray, problem: str, fix: str) -> None:
        idx = np.flatnonzero(bad)
        if len(idx):
            k = int(idx[0])
            where = _where(dicts, int(img_of[k]), int(ann_of[k]), dataset_name)
            more = f" ({len(idx)} annotations in total have this problem)" if len(idx) > 1 else ""
            raise DatasetError(
                f"{where}: {problem(k) if callable(problem) else problem}{more}. {fix}"
            )

    mode_arr = _int_array(modes)
    fail(
        ~np.isin(mode_arr, _ABS_MODES),
        lambda k: f"bbox_mode={modes[k]!r} is missing or not absolute",
        "Detectron2 only supports BoxMode.XYXY_ABS / XYWH_ABS here: convert relative boxes to "
        "pixels (multiply by width/height) and set 'bbox_mode' in your loader.",
    )
    box = _float_boxes(boxes)
    fail(
        ~np.isfinite(box).all(axis=1),
        lambda k: f"bbox={boxes[k]!r} is missing, not 4 numbers, or not finite",
        "Every annotation needs a finite 4-number 'bbox'; fix or drop it.",
    )
    xywh = mode_arr == int(BoxMode.XYWH_ABS)
    x0, y0 = box[:, 0], box[:, 1]
    x1 = np.where(xywh, x0 + box[:, 2], box[:, 2])
    y1 = np.where(xywh, y0 + box[:, 3], box[:, 3])
    fail(
        (x1 < x0) | (y1 < y0),
        lambda k: f"bbox={boxes[k]!r} ({BoxMode(int(mode_arr[k])).name}) has negative size",
        "Check that 'bbox_mode' matches the box layout (XYWH vs XYXY).",
    )
    cat_arr = _int_array(cats)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    fail(
        (cat_arr < 0) | (cat_arr >= upper),
        lambda k: f"category_id={cats[k]!r} is missing or outside [0, {num_classes})",
        "Detectron2 needs contiguous ids 0..K-1 (load_coco_json maps COCO ids, custom loaders "
        "must do it themselves) and K must equal len(thing_classes) / the model's num_classes.",
    )
    height = np.asarray([d["height"] for d in dicts if d.get("annotations")], dtype=np.float64)
    width = np.asarray([d["width"] for d in dicts if d.get("annotations")], dtype=np.float64)
    per_ann = np.repeat(np.arange(len(height)), counts_arr[counts_arr > 0])
    hh, ww = height[per_ann], width[per_ann]
    iw = np.minimum(x1, ww) - np.maximum(x0, 0)
    ih = np.minimum(y1, hh) - np.maximum(y0, 0)
    outside = (iw < 0) | (ih < 0) | ((iw == 0) & (x1 > x0)) | ((ih == 0) & (y1 > y0))
    fail(
        outside,
        lambda k: f"bbox={boxes[k]!r} lies entirely outside the {ww[k]:g}x{hh[k]:g} (WxH) image",
        "Check 'bbox_mode' (XYWH vs XYXY), and that height/width are not swapped or stale.",
    )


def check_sem_seg_labels(
    dicts: List[dict],
    num_classes: int,
    ignore_label: int = 255,
    max_files: int = 16,
    *,
    dataset_name: str = "?",
) -> None:
    """Read up to ``max_files`` label maps (evenly spread) and check their values.

    Every value must be in ``[0, num_classes)`` or equal ``ignore_label``; maps must be
    single-channel, because Detectron2 reads them with ``convert("L")`` for training (palette or
    RGB maps would be turned into luminance values) but raw for evaluation.
    """
    from PIL import Image

    files = [d["sem_seg_file_name"] for d in dicts if "sem_seg_file_name" in d]
    if not files:
        return
    picks = np.unique(np.linspace(0, len(files) - 1, min(max_files, len(files))).astype(int))
    for i in picks:
        path = files[int(i)]
        with Image.open(path) as img:
            raw = np.asarray(img)
            labels = raw if img.mode in ("L", "I", "I;16") else np.asarray(img.convert("L"))
            mode = img.mode
        if mode not in ("L", "I", "I;16") and not np.array_equal(
            labels, raw if raw.ndim == 2 else raw[..., 0]
        ):
            raise DatasetError(
                f"Dataset '{dataset_name}': label map '{path}' has PIL mode '{mode}'; Detectron2 "
                "converts it to grayscale for training (palette colors become luminance values), "
                "but reads raw indices for evaluation. Save label maps as single-channel 'L' PNGs "
                "holding the class indices."
            )
        values = np.unique(labels)
        bad = values[(values >= num_classes) & (values != ignore_label)]
        if len(bad):
            raise DatasetError(
                f"Dataset '{dataset_name}': label map '{path}' contains values "
                f"{bad[:10].tolist()} outside [0, {num_classes}) that are not ignore_label="
                f"{ignore_label} (values present: {values[:20].tolist()}). A label offset (e.g. "
                "raw ADE20K maps use 0=unlabeled and 1..150 for classes, while Detectron2 wants "
                "0..149 and 255=ignore) fails in the loss or silently gives near-zero mIoU. For "
                "ADE20K run detectron2's datasets/prepare_ade20k_sem_seg.py and register its "
                "annotations_detectron2 output; otherwise subtract the offset and map unlabeled "
                f"pixels to {ignore_label}."
            )


def load_sem_seg_dicts(names: Union[str, Sequence[str]], *, max_check_files: int = 8) -> List[dict]:
    """Load and check semantic-segmentation dataset dicts (config-friendly, like above).

    Concatenates ``DatasetCatalog.get(name)`` for all names, checks that the label files exist
    and that a sample of them has labels in range for the dataset's ``stuff_classes``.
    """
    names = _as_list(names)
    out: List[dict] = []
    for name in names:
        _check_registered(name)
        _check_paths(name)
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise DatasetError(f"Dataset '{name}' is empty; check its registration and files.")
        if "sem_seg_file_name" not in dicts[0]:
            raise DatasetError(
                f"Dataset '{name}' has no 'sem_seg_file_name' entries, so it is not a semantic "
                "segmentation dataset; use load_dataset_dicts for detection datasets, or the "
                "'*_sem_seg_*' variant of this dataset."
            )
        validate_dataset_dicts(dicts, dataset_name=name)
        check_image_files(dicts, dataset_name=name)
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes", None)
        if classes is None:
            raise DatasetError(
                f"Dataset '{name}' has no 'stuff_classes' metadata; set it with "
                f"MetadataCatalog.get('{name}').set(stuff_classes=[...], ignore_label=255)."
            )
        check_sem_seg_labels(
            dicts,
            len(classes),
            int(meta.get("ignore_label", 255)),
            max_check_files,
            dataset_name=name,
        )
        out.extend(dicts)
    return out

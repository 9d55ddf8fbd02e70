"""The demo's inputs: which files (folders expanded), each read as an 8-bit RGB image of a size
the model can take, or an :class:`InputError` that names the file.

Why not detectron2's ``read_image``: it turns a 16-bit grayscale PNG white and a float32 TIFF
black (PIL's ``convert`` clips the values to 0..255 instead of scaling them), its errors do not
name the file, and it decodes any size (an 8000 x 8000 photo, drawn by a model without a
test-time resize, took 20 GB).
"""
from __future__ import annotations

import glob
import logging
import os
from typing import Iterable, List, Optional

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_SIZE",
    "IMAGE_EXTENSIONS",
    "InputError",
    "config_test_max_size",
    "expand_inputs",
    "fit_longest_side",
    "float_range",
    "read_rgb",
    "to_rgb8",
]

logger = logging.getLogger("e3va_d2.demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm")
# detectron2's COCO test size caps the longer side at 1333: the default for configs that do
# not resize at test time (the synthetic shapes demos).
DEFAULT_MAX_SIZE = 1333
# Refused before decoding: about 240 MB as 8-bit RGB, below PIL's own bomb warning (89 MP).
DEFAULT_MAX_PIXELS = 80_000_000
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class InputError(ValueError):
    """One input that cannot be drawn; the message starts with its path."""


def expand_inputs(patterns: Iterable[str]) -> List[str]:
    """Files for ``--input``: glob patterns expanded, folders replaced by the image files in
    them (sorted), anything else kept as given (a missing file fails when it is read)."""
    paths: List[str] = []
    for pattern in patterns:
        for match in sorted(glob.glob(pattern)) or [pattern]:
            if not os.path.isdir(match):
                paths.append(match)
                continue
            images = sorted(
                os.path.join(match, name) for name in os.listdir(match)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(match, name)))
            if not images:
                logger.warning("%s is a folder without images (%s)", match,
                               ", ".join(IMAGE_EXTENSIONS))
            paths.extend(images)
    return paths


def float_range(values: np.ndarray) -> float:
    """The full scale of a float image: 1 for intensities in [0, 1] (how float images are
    written), else the smallest integer range (8 or 16 bits) that holds its values."""
    finite = values[np.isfinite(values)]
    top = float(finite.max()) if finite.size else 0.0
    return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0


def to_rgb8(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB. 16-bit samples are scaled (65535 -> 255), not clipped; PIL opens
    16-bit grayscale PNGs as mode "I", whose values are taken as 16-bit too. Float images
    (mode "F", e.g. a float32 TIFF) are scaled the same way from their full scale
    (:func:`float_range`: 1.0 -> 255 for values in [0, 1]); PIL's ``convert`` would clip them
    to 0 or 1, a black picture."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # rounded
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scaled = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0) * (
            255.0 / float_range(values))
        gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_rgb(path: str, max_size: Optional[int] = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image at ``path`` as (H, W, 3) uint8 RGB, EXIF orientation applied (as detectron2's
    ``read_image``), its longer side scaled down to ``max_size`` if larger. Refuses, before
    decoding, an image of more than ``max_pixels``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(f"{path}: {width}x{height} = {width * height} pixels, more "
                                 f"than --max-pixels {max_pixels}; not decoded")
            if max_size and image.format == "JPEG":
                image.draft("RGB", (max_size, max_size))  # decode large JPEGs at a lower scale
            rgb = to_rgb8(ImageOps.exif_transpose(image))
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # e.g. "image file is truncated", "cannot identify image file"
        raise InputError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
    return fit_longest_side(rgb, max_size) if max_size else rgb


def fit_longest_side(image: np.ndarray, max_size: int) -> np.ndarray:
    """``image`` scaled down (keeping its aspect) so its longer side is at most ``max_size``."""
    height, width = image.shape[:2]
    if max(height, width) <= max_size:
        return image
    scale = max_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def config_test_max_size(cfg) -> Optional[int]:
    """The longer-side cap of the config's test-time resize (``ResizeShortestEdge``'s
    ``max_size``), or None when its test mapper does not resize."""
    mapper = cfg.dataloader.test.get("mapper", {})
    for augmentation in mapper.get("augmentations", []) or []:
        if hasattr(augmentation, "get") and augmentation.get("max_size"):
            return int(augmentation.max_size)
    return None

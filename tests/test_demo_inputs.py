"""The demo reads what it is given, or says which file it could not: 16-bit PNGs scaled to 8
bits (not all white), inputs scaled down to the config's test size (an 8000 x 8000 photo took
20 GB), huge files refused before decoding, folders expanded, and one unreadable or truncated
file skipped and named in a summary with exit status 1, while the others are drawn. Without a
trained checkpoint the demo refuses, as --eval-only does."""
import io
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from e3va_d2.config import ConfigError, load_config
from projects.demo import demo
from projects.demo.inputs import (
    InputError,
    config_test_max_size,
    expand_inputs,
    read_rgb,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
MASK_RCNN = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
COCO = os.path.join(ROOT, "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")


def sixteen_bit_png(path, size=(40, 64)):
    """A grayscale ramp over the whole 16-bit range."""
    ramp = np.linspace(0, 65535, size[0] * size[1]).round().astype(np.uint16).reshape(size)
    Image.fromarray(ramp).save(path)
    return ramp


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = sixteen_bit_png(tmp_path / "depth.png")
    rgb = read_rgb(str(tmp_path / "depth.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (*ramp.shape, 3)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(rgb[:, :, 0], expected) and np.array_equal(rgb[:, :, 2], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb == 255).mean() < 0.01


def test_large_inputs_are_scaled_to_the_test_size(tmp_path):
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(tmp_path / "big.jpg", quality=80)
    rgb = read_rgb(str(tmp_path / "big.jpg"), max_size=1333)
    assert rgb.shape == (1000, 1333, 3)
    assert config_test_max_size(load_config(COCO)) == 1333  # ResizeShortestEdge(800, 1333)
    assert config_test_max_size(load_config(MASK_RCNN)) is None  # no test resize: demo default


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "wide.png")
    with pytest.raises(InputError, match="wide.png: 300x200 .* --max-pixels"):
        read_rgb(str(tmp_path / "wide.png"), max_pixels=50_000)


def test_a_truncated_image_error_names_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:600])
    with pytest.raises(InputError, match=f"{tmp_path / 'cut.jpg'}: cannot read the image"):
        read_rgb(str(tmp_path / "cut.jpg"))


def test_folders_are_expanded_to_their_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.JPG"), str(tmp_path / "b.png")]


def run_demo(tmp_path, *inputs, opts=("train.eval_untrained=True",)):
    return demo.main(["--config-file", MASK_RCNN, "--input", *inputs,
                      "--output", str(tmp_path / "out"), "--opts", "train.device=cpu", *opts])


def test_a_bad_file_is_skipped_named_and_fails_the_run(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    source = DatasetCatalog.get("shapes_mini_val")[0]["file_name"]
    Image.open(source).save(folder / "good.png")
    sixteen_bit_png(folder / "depth.png")
    Image.new("RGB", (3000, 2000), (200, 40, 40)).save(folder / "big.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    missing = str(tmp_path / "missing.png")
    with pytest.raises(SystemExit) as info:
        run_demo(tmp_path, str(folder), missing)
    message = str(info.value.code)
    assert message.startswith("Skipped 2 of 5 inputs")
    assert str(folder / "broken.png") in message and missing in message
    drawn = sorted(os.listdir(tmp_path / "out"))
    assert drawn == ["big.png", "depth.png", "good.png"]
    # predicted at the demo's test size (the shapes config does not resize), drawn at scale 2
    assert Image.open(tmp_path / "out" / "big.png").size == (2 * 1333, 2 * 889)
    assert Image.open(tmp_path / "out" / "good.png").size == tuple(
        2 * s for s in Image.open(source).size)


def test_the_demo_refuses_an_untrained_model(tmp_path):
    source = DatasetCatalog.get("shapes_mini_val")[0]["file_name"]
    with pytest.raises(ConfigError, match="never trained.*--trained.*eval_untrained=True"):
        run_demo(tmp_path, source, opts=())
    assert not (tmp_path / "out").exists()  # refused before anything is drawn


def test_a_float_image_is_scaled_as_sixteen_bit_ones_are(tmp_path):
    """A float32 TIFF (mode F, values 0-1) was drawn black: PIL's convert clipped it to 0/1."""
    ramp = np.linspace(0, 1, 40 * 64, dtype=np.float32).reshape(40, 64)
    Image.fromarray(ramp, mode="F").save(tmp_path / "float.tif")
    rgb = read_rgb(str(tmp_path / "float.tif"))
    expected = np.round(ramp.astype(np.float64) * 255).astype(np.uint8)
    assert rgb.dtype == np.uint8 and np.array_equal(rgb[:, :, 1], expected)
    assert rgb.min() == 0 and rgb.max() == 255


def test_the_demo_never_writes_over_an_input(tmp_path):
    """`--input dir/photo.png --output dir` replaced the photo with the drawing, exit 0."""
    source = DatasetCatalog.get("shapes_mini_val")[0]["file_name"]
    Image.open(source).save(tmp_path / "photo.png")
    before = (tmp_path / "photo.png").read_bytes()
    for given in (tmp_path / "photo.png", tmp_path):  # the file, or its folder
        with pytest.raises(ConfigError, match=f"{tmp_path / 'photo.png'} would be written to "
                           f"{tmp_path / 'photo.png'}, which is the input"):
            demo.main(["--config-file", MASK_RCNN, "--input", str(given), "--output",
                       str(tmp_path), "--opts", "train.device=cpu", "train.eval_untrained=True"])
    assert (tmp_path / "photo.png").read_bytes() == before


def test_inputs_with_one_base_name_get_distinct_pictures(tmp_path):
    """a/x.png and b/x.jpg both became x.png, the second over the first, while the message
    counted two pictures."""
    for name in ("a/x.png", "b/x.jpg"):
        (tmp_path / name).parent.mkdir()
        Image.new("RGB", (48, 40), (200, 40, 40)).save(tmp_path / name)
    written = run_demo(tmp_path, str(tmp_path / "a"), str(tmp_path / "b"))
    assert sorted(os.listdir(tmp_path / "out")) == ["a__x.png", "b__x.png"]
    assert len(written) == 2
    assert demo.picture_names(["d/x.png", "d/x.jpg", "e/y.png", "d/x.png"]) == [
        "d__x.png.png", "d__x.jpg.png", "y.png", "d__x.png-2.png"]

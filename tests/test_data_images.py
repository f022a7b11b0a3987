"""load_rgb / check_image: every image mode the datasets may hold comes back as 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fedrsclip.data import IMAGE_EXTENSIONS, ImageReadError, check_image, is_image_file, load_rgb


def _px(im: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    return im.getpixel(xy)


def test_rgb_passthrough(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(p)
    im = load_rgb(p)
    assert im.mode == "RGB" and im.size == (5, 4) and _px(im) == (10, 20, 30)


def test_rgba_is_composited_over_black(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., :3] = (200, 100, 50)
    arr[0, 0, 3] = 0  # fully transparent
    arr[1, 1, 3] = 255  # opaque
    arr[2, 2, 3] = 128  # half
    p = tmp_path / "rgba.png"
    Image.fromarray(arr).save(p)
    im = load_rgb(p)
    assert im.mode == "RGB"
    assert _px(im, (0, 0)) == (0, 0, 0)
    assert _px(im, (1, 1)) == (200, 100, 50)
    assert _px(im, (2, 2)) == pytest.approx((100, 50, 25), abs=2)


def test_la_and_palette_modes(tmp_path):
    la = Image.new("LA", (3, 3), (180, 255))
    la.putpixel((0, 0), (180, 0))
    la.save(tmp_path / "la.png")
    im = load_rgb(tmp_path / "la.png")
    assert im.mode == "RGB" and _px(im, (1, 1)) == (180, 180, 180) and _px(im, (0, 0)) == (0, 0, 0)

    pal = Image.new("P", (3, 3), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert _px(load_rgb(tmp_path / "p.png")) == (10, 200, 30)

    pal.info["transparency"] = 1
    pal.save(tmp_path / "pt.png", transparency=1)
    assert _px(load_rgb(tmp_path / "pt.png")) == (0, 0, 0)


def test_grayscale_and_1bit(tmp_path):
    Image.new("L", (6, 2), 77).save(tmp_path / "l.png")
    im = load_rgb(tmp_path / "l.png")
    assert im.mode == "RGB" and _px(im) == (77, 77, 77)
    one = Image.new("1", (9, 9), 1)
    one.save(tmp_path / "one.png")
    one.save(tmp_path / "one.bmp")
    for name in ("one.png", "one.bmp"):
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and _px(im) == (255, 255, 255)


def test_16bit_tiff_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
    arr = np.array([[0, 250], [500, 1000]], dtype=np.uint16)
    p = tmp_path / "i16.tif"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode == "I;16"
    im = load_rgb(p)
    assert im.mode == "RGB"
    got = np.asarray(im)[..., 0]
    # Scaled by its bit depth, found from its maximum (1000 -> 10 bits, 0..1023): nothing clipped, and a
    # 10-bit image looks as its 8-bit rendering would.
    assert got.tolist() == [[0, 62], [125, 249]]
    assert (np.asarray(im)[..., 0] == np.asarray(im)[..., 2]).all()


def test_16bit_big_endian_and_32bit_tiff(tmp_path):
    arr = np.array([[0, 300], [600, 1200]], dtype=">u2")
    big = Image.frombytes("I;16B", (2, 2), arr.tobytes())
    big.save(tmp_path / "i16b.tif")
    assert np.asarray(load_rgb(tmp_path / "i16b.tif"))[..., 1].tolist() == [[0, 37], [75, 149]]  # 11 bits

    i32 = Image.fromarray(np.array([[0, 70000], [35000, 140000]], dtype=np.int32))
    assert i32.mode == "I"
    i32.save(tmp_path / "i32.tif")
    assert np.asarray(load_rgb(tmp_path / "i32.tif"))[..., 0].tolist() == [[0, 68], [34, 136]]  # 18 bits

    f32 = Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32))
    f32.save(tmp_path / "f.tif")
    assert np.asarray(load_rgb(tmp_path / "f.tif"))[..., 0].tolist() == [[0, 64], [128, 255]]


def test_all_black_16bit_does_not_divide_by_zero(tmp_path):
    Image.fromarray(np.zeros((3, 3), dtype=np.uint16)).save(tmp_path / "z.tif")
    assert np.asarray(load_rgb(tmp_path / "z.tif")).max() == 0


def test_cmyk(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    for name in ("c.tif", "c.jpg"):
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB"
        r, g, b = _px(im)
        assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("size", [(7, 13), (1, 1), (255, 256), (256, 251)])
def test_odd_sizes_are_kept(tmp_path, size):
    p = tmp_path / "odd.tif"
    Image.new("RGB", size, (1, 2, 3)).save(p)
    assert load_rgb(p).size == size


def test_truncated_png_raises_with_file_name(tmp_path):
    p = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="trunc.png"):
        load_rgb(p)
    with pytest.raises(ImageReadError, match="trunc.png"):
        check_image(p)


def test_truncated_jpeg_is_caught_by_check_image(tmp_path):
    p = tmp_path / "trunc.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, quality=95)
    p.write_bytes(p.read_bytes()[:1500])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        check_image(p)
    with pytest.raises(ImageReadError):
        load_rgb(p)


def test_text_file_named_jpg_and_missing_file(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image")
    with pytest.raises(ImageReadError, match="notes.jpg") as info:
        load_rgb(p)
    assert isinstance(info.value, ValueError)  # DataError is a ValueError
    with pytest.raises(ImageReadError, match="not found"):
        load_rgb(tmp_path / "missing.png")


def test_image_extensions_case_insensitive():
    assert {".tif", ".tiff", ".jp2", ".jpg", ".jpeg", ".png", ".bmp", ".webp"} == set(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.TIF") and is_image_file("x.JpEg") and is_image_file("y.webp")
    assert not is_image_file("readme.txt") and not is_image_file("Thumbs.db") and not is_image_file("noext")

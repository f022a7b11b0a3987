"""Rasters of any band count and dtype (rasterio), composites, scaling, the pixel cap and the dynamic-range warning."""

from __future__ import annotations

import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from fedrsclip.data import DataError, ImageReadError, check_image, list_dataset, load_rgb
from fedrsclip.data.composite import DynamicRangeWarning, image_settings
from fedrsclip.data.raster import read_band_folder

S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def _scene(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """An 8-bit RGB picture with structure (gradients, blocks, noise), [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 3 % 256, y * 5 % 256, (x + y) * 2 % 256], -1).astype(np.float64)
    base[h // 4 : h // 2, w // 4 : w // 2] = (200, 180, 40)
    return np.clip(base * 0.8 + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _write_tif(path: Path, bands: np.ndarray, descriptions=None, georef=True, **profile) -> Path:
    """bands [B, H, W] as a GeoTIFF (10 m pixels in UTM 29N unless georef is false)."""
    count, height, width = bands.shape
    meta = dict(driver="GTiff", count=count, height=height, width=width, dtype=bands.dtype.name, **profile)
    if georef:
        meta.update(crs="EPSG:32629", transform=from_origin(600000, 5800000, 1200 / width, 1200 / height))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **meta) as ds:
        ds.write(bands)
        for i, d in enumerate(descriptions or [], start=1):
            ds.set_band_description(i, d)
    return path


def test_16bit_rgb_with_12bit_data_keeps_its_brightness(tmp_path):
    # Issue 13: a 16-bit RGB TIFF holding 12-bit data came out near-black (mean 1.1 instead of 24.3).
    rgb8 = _scene()
    path = _write_tif(tmp_path / "rgb16.tif", (np.moveaxis(rgb8, -1, 0).astype(np.uint16) * 16), photometric="RGB")
    seen = np.asarray(load_rgb(path))
    assert seen.shape == rgb8.shape
    assert abs(seen.mean() - rgb8.mean()) <= 0.1 * rgb8.mean()
    assert np.abs(seen.astype(int) - rgb8.astype(int)).max() <= 1  # one scale for all bands: colours kept


def test_16bit_rgb_plus_nir_uses_the_rgb_bands(tmp_path):
    rgb8 = _scene(seed=1)
    nir = np.full(rgb8.shape[:2], 4000, np.uint16)[None]
    stack = np.concatenate([np.moveaxis(rgb8, -1, 0).astype(np.uint16) * 16, nir])
    seen = np.asarray(load_rgb(_write_tif(tmp_path / "rgbn.tif", stack)))
    # auto scaling spans the bands shown (the NIR band is not one of them), so the picture keeps its brightness
    assert abs(seen.mean() - rgb8.mean()) <= 0.1 * rgb8.mean()


def test_8bit_tiff_is_unchanged(tmp_path):
    rgb8 = _scene(seed=2)
    Image.fromarray(rgb8).save(tmp_path / "photo.tif")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "photo.tif")), rgb8)


def test_13_band_eurosat_ms_file_is_read_and_composited(tmp_path):
    # Issue 13: 13-band EuroSAT-style GeoTIFFs were skipped as "corrupt, re-download".
    rng = np.random.default_rng(0)
    root = tmp_path / "EuroSATallBands"
    for cls in ("AnnualCrop", "SeaLake"):
        for i in range(3):
            _write_tif(root / cls / f"{cls}_{i}.tif", rng.integers(0, 3000, (13, 16, 16)).astype(np.uint16))
    listing = list_dataset("eurosat-ms", root, progress=False)
    assert listing.skipped == [] and len(listing.records) == 6 and listing.modality == "s2"
    assert listing.classes == ["annual crop", "sea lake"]

    path = root / "AnnualCrop" / "AnnualCrop_0.tif"
    with rasterio.open(path) as ds:
        bands = ds.read().astype(np.float64)
    true = np.asarray(load_rgb(path, image_settings("s2")))
    expected = np.rint(np.clip(bands[[3, 2, 1]] / 3000.0, 0, 1) * 255)  # B04, B03, B02 in 0..3000
    assert np.array_equal(np.moveaxis(true, -1, 0), expected.astype(np.uint8))
    false = np.asarray(load_rgb(path, image_settings("s2", "false-color")))
    assert np.array_equal(false[..., 0], np.rint(np.clip(bands[7] / 6000.0, 0, 1) * 255).astype(np.uint8))  # B08


def test_band_descriptions_name_the_bands(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 3000, (4, 8, 8)).astype(np.uint16)
    path = _write_tif(tmp_path / "named.tif", stack, descriptions=["B08", "B04", "B03", "B02"])
    seen = np.asarray(load_rgb(path, image_settings("s2", "B4,b3,B02", scaling="range", scale_range="0,3000")))
    assert np.array_equal(seen[..., 0], np.rint(np.clip(stack[1] / 3000.0, 0, 1) * 255).astype(np.uint8))


def test_composite_naming_a_missing_band_says_which(tmp_path):
    path = _write_tif(tmp_path / "two.tif", np.ones((2, 8, 8), np.float32), descriptions=["VV", "VH"])
    with pytest.raises(ImageReadError, match=r"two\.tif has no band B08.*data\.composite") as info:
        load_rgb(path, image_settings("s2", "false-color"))
    assert info.value.kind == "missing band"


def test_many_unnamed_bands_in_the_rgb_modality_ask_for_a_setting(tmp_path):
    path = _write_tif(tmp_path / "five.tif", np.ones((5, 8, 8), np.uint16))
    with pytest.raises(ImageReadError, match="5 bands.*data.modality"):
        load_rgb(path)


def test_paletted_tiff_uses_its_colour_map(tmp_path):
    index = np.array([[0, 1], [1, 0]], np.uint8)
    path = tmp_path / "pal.tif"
    with rasterio.open(
        path, "w", driver="GTiff", count=1, height=2, width=2, dtype="uint8", photometric="PALETTE"
    ) as ds:
        ds.write(index, 1)
        ds.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 50, 255)})
    seen = np.asarray(load_rgb(path))
    assert seen[0, 0].tolist() == [10, 20, 30] and seen[0, 1].tolist() == [200, 100, 50]


def test_sar_linear_power_to_db_and_percentile_stretch(tmp_path):
    rng = np.random.default_rng(3)
    vv_db, vh_db = rng.uniform(-20, -5, (2, 16, 16)).astype(np.float32)
    linear = np.stack([10 ** (vv_db / 10), 10 ** (vh_db / 10)]).astype(np.float32)
    path = _write_tif(tmp_path / "s1.tif", linear, descriptions=["VV", "VH"])
    seen = np.asarray(load_rgb(path, image_settings("s1", linear_to_db=True)))
    expected_vv = np.rint(np.clip((vv_db + 25) / 25, 0, 1) * 255)
    assert np.abs(seen[..., 0].astype(int) - expected_vv).max() <= 1
    stretched = np.asarray(load_rgb(path, image_settings("s1", "vv", scaling="percentile")))
    assert stretched.min() == 0 and stretched.max() == 255  # 2-98% of its own values


def test_dynamic_range_warning_near_black_and_saturated(tmp_path):
    path = _write_tif(tmp_path / "dim.tif", np.full((3, 8, 8), 100, np.uint16))
    with pytest.warns(DynamicRangeWarning, match="near-black"):
        load_rgb(path, image_settings("rgb", scaling="range", scale_range="0,65535"))
    with pytest.warns(DynamicRangeWarning, match="saturated"):
        load_rgb(path, image_settings("rgb", scaling="range", scale_range="0,50"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_rgb(path, image_settings("rgb", scaling="range", scale_range="0,200"))  # mid-grey: no warning


def _patch(folder: Path, sizes: dict[str, int], shift: float = 0.0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for band, side in sizes.items():
        meta = dict(
            driver="GTiff",
            count=1,
            height=side,
            width=side,
            dtype="uint16",
            crs="EPSG:32629",
            transform=from_origin(600000 + (shift if band == "B02" else 0), 5800000, 1200 / side, 1200 / side),
        )
        with rasterio.open(folder / f"{folder.name}_{band}.tif", "w", **meta) as ds:
            ds.write(rng.integers(0, 3000, (1, side, side)).astype(np.uint16))
    return folder


def test_band_folder_resamples_to_the_finest_grid(tmp_path):
    folder = _patch(tmp_path / "p1", {"B02": 120, "B03": 120, "B04": 60})
    raster = read_band_folder(folder, ["B04", "B03", "B02"], max_pixels=10**6)
    assert raster.data.shape == (3, 120, 120) and raster.names == ("B04", "B03", "B02")


def test_band_folder_errors_name_the_band_and_what_to_do(tmp_path):
    missing = _patch(tmp_path / "p2", {"B02": 120, "B03": 120})
    with pytest.raises(ImageReadError, match=r"p2 has no file for band B04.*data\.composite") as info:
        read_band_folder(missing, ["B04", "B03", "B02"], max_pixels=10**6)
    assert info.value.kind == "missing band"
    odd = _patch(tmp_path / "p3", {"B02": 120, "B03": 120, "B04": 50})
    with pytest.raises(ImageReadError, match="band B04 is 50 x 50.*120 x 120") as info:
        read_band_folder(odd, ["B04", "B03", "B02"], max_pixels=10**6)
    assert info.value.kind == "inconsistent bands"
    moved = _patch(tmp_path / "p4", {"B02": 120, "B03": 120, "B04": 120}, shift=500.0)
    with pytest.raises(ImageReadError, match="cover the same area"):
        read_band_folder(moved, ["B04", "B03", "B02"], max_pixels=10**6)


def _png_header_only_bomb(path: Path, side: int) -> Path:
    """A valid 16-bit grey PNG of side x side zeros: a few hundred KB that decode to side^2 * 2 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * side)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0))
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("side", [7000, 13000])
def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path, side):
    # Issue 11 item 13: a 344 KB 16-bit 13000 x 13000 PNG took 3.75 GB and 21 s to load.
    path = _png_header_only_bomb(tmp_path / "bomb.png", side)
    assert path.stat().st_size < 2_000_000
    start = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"data\.max_pixels") as info:
        load_rgb(path)
    assert time.perf_counter() - start < 2.0
    assert info.value.kind == "too large" and f"{side} x {side}" in str(info.value)
    with pytest.raises(ImageReadError, match="max_pixels"):
        check_image(path)


def test_pixel_cap_applies_to_photos_and_can_be_raised(tmp_path):
    Image.fromarray(_scene(100, 100)).save(tmp_path / "big.jpg")
    with pytest.raises(ImageReadError, match="10,000 pixels is more than data.max_pixels"):
        load_rgb(tmp_path / "big.jpg", image_settings(max_pixels=9_999))
    assert load_rgb(tmp_path / "big.jpg", image_settings(max_pixels=10_000)).size == (100, 100)


def test_pixel_cap_above_pillows_own_limit_is_honoured(tmp_path, monkeypatch):
    # Raising data.max_pixels beyond Pillow's decompression-bomb limit must work (Pillow's limit shrunk here).
    Image.fromarray(_scene(40, 40)).save(tmp_path / "a.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: Pillow alone refuses
    assert load_rgb(tmp_path / "a.jpg", image_settings(max_pixels=2000)).size == (40, 40)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ImageReadError, match="too large|max_pixels"):
        load_rgb(tmp_path / "a.jpg", image_settings(max_pixels=1000))


def test_settings_are_checked_where_they_enter():
    from fedrsclip.config import ConfigError, load_config

    cfg = load_config(overrides=["data.modality=s1", "data.composite=VV,VH,VV/VH", "data.scale_range=-25,0;-30,-5;0,2"])
    assert cfg.data.composite == "VV,VH,VV/VH"
    for bad, message in [
        (["data.modality=s2", "data.composite=B08,B04,B99"], "no band B99"),
        (["data.modality=s1", "data.composite=VV,VH,VV/VH"], "VV/VH has no default display range"),
        (["data.scaling=gamma"], "data.scaling must be one of"),
        (["data.scale_range=0,10;5"], "data.scale_range must be"),
        (["data.composite=B04,B03"], "3 channels"),
        (["data.max_pixels=-1"], "data.max_pixels must be a positive integer"),
        (["data.stretch_low=60", "data.stretch_high=40"], "stretch_low"),
    ]:
        if bad == ["data.composite=B04,B03"]:
            bad = ["data.modality=s2", *bad]
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=bad)
    with pytest.raises(DataError, match="modality s2 has no band"):
        image_settings("s2", "B04,VV,B02")
    with pytest.raises(DataError, match="false-color' is a composite of modality s2, not rgb; set data.modality=s2"):
        image_settings("auto", "false-color")

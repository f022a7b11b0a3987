"""Open any image or patch the datasets may contain and return what the image encoder sees, as 8-bit RGB.

`load_rgb(path, settings)` is THE path from a manifest item to the encoder's 3-channel image: feature extraction
and `fedrsclip data preview` both call it, so the preview is what the encoder sees. Rasters (GeoTIFF, JPEG 2000,
16-bit PNG) and band-per-file patch folders are read with rasterio and composited (fedrsclip.data.composite);
ordinary 8-bit photos (JPEG, PNG, BMP, WebP) with Pillow. Every path checks the pixel count from the header
before decoding (`ImageSettings.max_pixels`).
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from .composite import ImageSettings, convention_for, render, select_channels
from .errors import ImageReadError
from .raster import Raster, band_files, read_band_folder, read_raster

# Lower-case suffixes (with the dot) that the readers treat as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff", ".jp2", ".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Read with rasterio: any band count and data type. PNGs of 16 bits per sample too (see _is_wide_png).
RASTER_EXTENSIONS: frozenset[str] = frozenset({".tif", ".tiff", ".jp2"})
DEFAULT_SETTINGS = ImageSettings()

# Exceptions Pillow's plugins raise on broken files; a broad but explicit list
# so that genuine programming errors elsewhere are not swallowed.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)

# Modes that hold one channel of integers or floats wider than 8 bits.
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# Pillow's own decompression-bomb limit is a module global: raised (under this lock) only for one open() of an
# image that data.max_pixels allows.
_BOMB_LOCK = threading.Lock()


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _alpha_to_rgb(im: Image.Image) -> Image.Image:
    # Transparent pixels become black, the usual no-data colour in
    # remote-sensing imagery, rather than whatever colour they happen to hold.
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an already loaded PIL image of any mode to a new RGB image."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode in _WIDE_MODES:
        return Image.fromarray(
            render(_pillow_raster(im, Path(getattr(im, "filename", "") or "image")), DEFAULT_SETTINGS), "RGB"
        )
    if mode in _ALPHA_MODES:
        return _alpha_to_rgb(im)
    if mode == "P":
        if "transparency" in im.info:
            return _alpha_to_rgb(im)
        return im.convert("RGB")
    # L, 1, CMYK, YCbCr, RGBX, HSV ... Pillow converts these directly.
    return im.convert("RGB")


def _pillow_raster(im: Image.Image, path: Path) -> Raster:
    """A Pillow image as a Raster (bands named R, G, B, A or GRAY), for composites other than the file's colours."""
    if im.mode in _WIDE_MODES:
        data = np.asarray(im, dtype=np.float32)[None]
        dtype = "float32" if im.mode == "F" else ("int32" if im.mode == "I" else "uint16")
        return Raster(data, ("GRAY",), dtype, path)
    rgba = im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info)
    conv = im.convert("RGBA" if rgba else "RGB")
    return Raster(
        np.moveaxis(np.asarray(conv, dtype=np.float32), -1, 0), tuple("RGBA" if rgba else "RGB"), "uint8", path
    )


def _is_wide_png(path: Path) -> bool:
    # The IHDR chunk (bytes 8-33) holds the bit depth at offset 24; Pillow would cut 16-bit RGB to 8 bits.
    with open(path, "rb") as handle:
        head = handle.read(26)
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16


def _uses_rasterio(path: Path) -> bool:
    suffix = path.suffix.lower()
    return path.is_dir() or suffix in RASTER_EXTENSIONS or (suffix == ".png" and path.is_file() and _is_wide_png(path))


def _read(path: Path, settings: ImageSettings) -> Raster:
    if path.is_dir():
        return read_band_folder(path, settings.bands(), settings.max_pixels)
    return read_raster(path, settings.max_pixels, convention_for(settings))


def _open_pillow(path: Path, max_pixels: int) -> Image.Image:
    """Image.open with data.max_pixels checked from the header, before anything is decoded."""
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:  # beyond Pillow's own limit: read the header only, then apply ours
        with _BOMB_LOCK:
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageReadError(
            f"skipping {path}: {width} x {height} = {width * height:,} pixels is more than data.max_pixels "
            f"({max_pixels:,}); it was not decoded. Raise the cap with --set data.max_pixels={width * height} "
            "or shrink the image",
            path=str(path),
            reason=f"{width} x {height} pixels > data.max_pixels {max_pixels:,}",
            kind="too large",
        )
    return im


def load_rgb(path: str | Path, settings: ImageSettings | None = None) -> Image.Image:
    """The 8-bit RGB image the encoder sees for a file or a band-per-file patch folder.

    settings (default: modality rgb, auto scaling) choose the composite and the scaling. Photos: alpha is
    composited over black, palette, grey, 1-bit, CMYK converted; single-channel images wider than 8 bits and
    rasters of any band count and data type are scaled as `settings.scaling` says (fedrsclip.data.composite).
    Multi-frame files give their first frame.

    Raises ImageReadError naming the file when it is missing, truncated, corrupt, not an image, larger than
    settings.max_pixels, or lacks a band the composite needs. Warns DynamicRangeWarning for a near-black or
    saturated result.
    """
    path = Path(path)
    settings = settings or DEFAULT_SETTINGS
    try:
        if _uses_rasterio(path):
            return Image.fromarray(render(_read(path, settings), settings), "RGB")
        with _open_pillow(path, settings.max_pixels) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                raise ValueError(f"image has zero size {im.size}")
            if settings.composite is None and settings.scaling == "auto":
                return to_rgb(im)
            return Image.fromarray(render(_pillow_raster(im, path), settings), "RGB")
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise _read_error(path, exc) from exc


def check_image(path: str | Path, settings: ImageSettings | None = None) -> None:
    """Raise ImageReadError unless the file (or patch) decodes completely and holds the composite's bands.

    Cheaper than load_rgb: no scaling; JPEGs are decoded at a reduced scale, which still reads the whole stream
    and so still catches truncation.
    """
    path = Path(path)
    settings = settings or DEFAULT_SETTINGS
    try:
        if _uses_rasterio(path):
            select_channels(_read(path, settings), settings)
            return
        # verify() checks PNG chunk CRCs, which a plain decode may not.
        with _open_pillow(path, settings.max_pixels) as im:
            im.verify()
        with _open_pillow(path, settings.max_pixels) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            if im.width < 1 or im.height < 1:
                raise ValueError(f"image has zero size {im.size}")
    except ImageReadError:
        raise
    except _DECODE_ERRORS as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: Path, exc: BaseException) -> ImageReadError:
    if isinstance(exc, FileNotFoundError):
        return ImageReadError(
            f"image file not found: {path}", path=str(path), reason="file not found", kind="not found"
        )
    if isinstance(exc, IsADirectoryError):
        return ImageReadError(
            f"expected an image file but {path} is a directory",
            path=str(path),
            reason="is a directory",
        )
    reason = str(exc) or type(exc).__name__
    return ImageReadError(
        f"cannot read image {path}: {reason} "
        "(the file is truncated, corrupt or not an image; re-download it or delete it)",
        path=str(path),
        reason=reason,
    )


def detect_modality(path: str | Path) -> str | None:
    """s2 or s1 for a band-per-file patch folder holding Sentinel-2 or Sentinel-1 bands, else None (rgb)."""
    path = Path(path)
    if not path.is_dir():
        return None
    names = set(band_files(path))
    if names & {"VV", "VH"}:
        return "s1"
    if names & {"B02", "B03", "B04", "B08"}:
        return "s2"
    return None

"""Open any image the datasets may contain and return it as 8-bit RGB."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageReadError

# Lower-case suffixes (with the dot) that the readers treat as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp", ".webp"}
)

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


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _wide_to_rgb(im: Image.Image) -> Image.Image:
    # Scale by the image's own maximum: 16-bit remote-sensing tiles often use
    # only 10-12 bits, so dividing by 65535 (or clipping at 255) would give a
    # black or a saturated picture.
    arr = np.asarray(im, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    arr = np.clip(arr, 0.0, None)
    peak = float(arr.max()) if arr.size else 0.0
    if peak > 0:
        arr = arr * (255.0 / peak)
    grey = np.rint(arr).astype(np.uint8)
    return Image.fromarray(np.stack([grey, grey, grey], axis=-1), mode="RGB")


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
        return _wide_to_rgb(im)
    if mode in _ALPHA_MODES:
        return _alpha_to_rgb(im)
    if mode == "P":
        if "transparency" in im.info:
            return _alpha_to_rgb(im)
        return im.convert("RGB")
    # L, 1, CMYK, YCbCr, RGBX, HSV ... Pillow converts these directly.
    return im.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file and return it fully decoded as an 8-bit RGB image.

    Handles alpha (composited over black), palette, grayscale, 1-bit, 16/32-bit
    integer and float single-channel images (scaled by the image's maximum),
    CMYK and any size. Multi-frame files give their first frame.

    Raises ImageReadError naming the file when it is missing, truncated,
    corrupt or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                raise ValueError(f"image has zero size {im.size}")
            rgb = to_rgb(im)
    except _DECODE_ERRORS as exc:
        raise _read_error(path, exc) from exc
    return rgb


def check_image(path: str | Path) -> None:
    """Raise ImageReadError unless the file decodes completely.

    Cheaper than load_rgb: skips the colour conversion and decodes JPEGs at a
    reduced scale, which still reads the whole stream and so still catches
    truncation.
    """
    path = Path(path)
    try:
        # verify() checks PNG chunk CRCs, which a plain decode may not.
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            if im.width < 1 or im.height < 1:
                raise ValueError(f"image has zero size {im.size}")
    except _DECODE_ERRORS as exc:
        raise _read_error(path, exc) from exc


def _read_error(path: Path, exc: BaseException) -> ImageReadError:
    if isinstance(exc, FileNotFoundError):
        return ImageReadError(f"image file not found: {path}", path=str(path), reason="file not found")
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

"""Read rasters of any band count and data type with rasterio (GDAL): single files and band-per-file patches.

A `Raster` is a float32 stack [B, H, W] with one name per band. Band names come from, in order: the file's band
descriptions, the caller's convention (e.g. Sentinel-2's 13-band order for EuroSAT), the colour interpretation
(red/green/blue/alpha/gray), else "1".."B" (GDAL's 1-based band numbers, which always work as names too).

Every read checks the pixel count from the header before decoding (`max_pixels`), so a small file that claims an
enormous size is refused in milliseconds instead of filling memory.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageReadError

# GDAL colour interpretations that name a band the rgb composite can use.
_COLORINTERP_NAMES = {"red": "R", "green": "G", "blue": "B", "alpha": "A", "gray": "GRAY", "palette": "P"}
_BAND_FILE = re.compile(r"^(?P<stem>.+)_(?P<band>[A-Za-z0-9]+)\.(?:tif|tiff|jp2)$", re.IGNORECASE)


def _rasterio():
    """rasterio, imported on first use; its NotGeoreferencedWarning is noise for photos (no map is drawn here)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    return rasterio


@dataclass
class Raster:
    """Bands of one image: `data` [B, H, W] (uint8 for 8-bit data without nodata, else float32 with NaN for
    nodata), `names` one per band (upper case), the source's `dtype`."""

    data: np.ndarray
    names: tuple[str, ...]
    dtype: str
    source: Path

    def band(self, name: str) -> np.ndarray:
        """The band called `name` (case-insensitive; "B4" finds "B04"; "1".."B" are band numbers), or KeyError."""
        key = normalise_band_name(name)
        if key in self.names:
            return self.data[self.names.index(key)]
        if key.isdigit() and 1 <= int(key) <= len(self.names):
            return self.data[int(key) - 1]
        raise KeyError(name)


def normalise_band_name(name: str) -> str:
    """Upper case, and Sentinel-2 numbers padded: "b4" -> "B04", "b8a" -> "B8A", "vv" -> "VV"."""
    key = name.strip().upper()
    match = re.fullmatch(r"B(\d)", key)
    return f"B0{match.group(1)}" if match else key


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise ImageReadError(
            f"cannot read image {path}: it has zero size ({width} x {height})",
            path=str(path),
            reason=f"zero size {width} x {height}",
            kind="unreadable",
        )
    if width * height > max_pixels:
        raise ImageReadError(
            f"skipping {path}: {width} x {height} = {width * height:,} pixels is more than data.max_pixels "
            f"({max_pixels:,}); it was not decoded. Raise the cap with --set data.max_pixels={width * height} "
            "(decoding needs about 4 bytes per pixel and band) or shrink the image",
            path=str(path),
            reason=f"{width} x {height} pixels > data.max_pixels {max_pixels:,}",
            kind="too large",
        )


def _open_error(path: Path, exc: BaseException) -> ImageReadError:
    if not path.exists():
        return ImageReadError(
            f"image file not found: {path}", path=str(path), reason="file not found", kind="not found"
        )
    reason = str(exc).strip() or type(exc).__name__
    return ImageReadError(
        f"cannot read raster {path}: {reason} (the file is truncated, corrupt or not a raster; re-export or "
        "re-download it, or delete it)",
        path=str(path),
        reason=reason,
        kind="unreadable",
    )


def _names(ds, conventions: Mapping[int, Sequence[str]]) -> tuple[str, ...]:
    described = [d for d in ds.descriptions if d]
    if len(described) == ds.count:
        return tuple(normalise_band_name(d) for d in ds.descriptions)
    if ds.count in conventions:
        return tuple(normalise_band_name(n) for n in conventions[ds.count])
    interp = [_COLORINTERP_NAMES.get(ci.name) for ci in ds.colorinterp]
    if all(interp) and len(set(interp)) == len(interp):
        return tuple(interp)
    return tuple(str(i) for i in range(1, ds.count + 1))


def read_raster(path: str | Path, max_pixels: int, conventions: Mapping[int, Sequence[str]] | None = None) -> Raster:
    """Every band of a raster file (GeoTIFF, 16-bit PNG, JPEG 2000 ...) as float32 [B, H, W].

    conventions: {band count: band names} for files without band descriptions (e.g. Sentinel-2's 13 bands). A paletted
    single band is expanded to R, G, B through its colour map. Nodata pixels become NaN (masked when scaled).
    Raises ImageReadError naming the file (kind "not found", "unreadable" or "too large").
    """
    from rasterio.errors import RasterioError

    rasterio = _rasterio()
    path = Path(path)
    try:
        with rasterio.open(path) as ds:
            _check_pixels(path, ds.width, ds.height, max_pixels)
            data = ds.read(masked=ds.nodata is not None)
            names = _names(ds, conventions or {})
            dtype = ds.dtypes[0]
            if names == ("P",):
                lut = np.zeros((256, 3), dtype=np.float32)
                for index, rgba in ds.colormap(1).items():
                    if 0 <= index < 256:
                        lut[index] = rgba[:3]
                data = np.moveaxis(lut[np.asarray(data[0], dtype=np.intp).clip(0, 255)], -1, 0)
                names, dtype = ("R", "G", "B"), "uint8"
    except ImageReadError:
        raise
    except (RasterioError, OSError, ValueError, MemoryError) as exc:
        raise _open_error(path, exc) from exc
    if np.ma.isMaskedArray(data):
        data = data.astype(np.float32).filled(np.nan)
    return Raster(np.asarray(data, dtype=np.uint8 if data.dtype == np.uint8 else np.float32), names, dtype, path)


def band_files(folder: Path) -> dict[str, Path]:
    """{band name: file} of a band-per-file patch folder (`<patch>_<BAND>.tif`, as BigEarthNet)."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        match = _BAND_FILE.match(entry.name)
        if match and entry.is_file():
            found[normalise_band_name(match.group("band"))] = entry
    return found


def read_band_folder(folder: str | Path, bands: Sequence[str], max_pixels: int) -> Raster:
    """The named bands of a band-per-file patch, resampled to the finest band's grid.

    BigEarthNet keeps 10 m bands at 120 x 120, 20 m at 60 x 60 and 60 m at 20 x 20: coarser bands are resampled
    bilinearly by GDAL (rasterio's `out_shape`) to the finest grid among `bands`. Bands must cover the same area
    (same bounds when georeferenced) at resolutions that divide each other. Each band file must lie inside the
    folder after resolving symlinks. Raises ImageReadError naming the folder and band (kind "missing band",
    "inconsistent bands", "outside the data root", or a file's own reading error).
    """
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    rasterio = _rasterio()
    folder = Path(folder)
    real = folder.resolve()
    files = band_files(folder)
    wanted = [normalise_band_name(b) for b in bands]
    missing = [b for b in wanted if b not in files]
    if missing:
        have = ", ".join(files) or "none"
        raise ImageReadError(
            f"patch {folder} has no file for band {', '.join(missing)} (bands found: {have}); restore the file, or "
            "choose a composite of bands every patch has with --set data.composite=...",
            path=str(folder),
            reason=f"band {', '.join(missing)} missing",
            kind="missing band",
        )
    headers = {}
    for band in dict.fromkeys(wanted):
        path = files[band]
        if not path.resolve().is_relative_to(real):
            raise ImageReadError(
                f"band file {path} resolves to {path.resolve()}, outside its patch folder {real}; replace the "
                "symlink with the file",
                path=str(path),
                reason="band file outside its patch folder",
                kind="outside the data root",
            )
        try:
            with rasterio.open(path) as ds:
                _check_pixels(path, ds.width, ds.height, max_pixels)
                headers[band] = (ds.height, ds.width, ds.bounds if ds.crs else None, ds.dtypes[0])
        except ImageReadError:
            raise
        except (RasterioError, OSError, ValueError) as exc:
            raise _open_error(path, exc) from exc
    height = max(h for h, _, _, _ in headers.values())
    width = max(w for _, w, _, _ in headers.values())
    for band, (h, w, bounds, _) in headers.items():
        if height % h or width % w or height // h != width // w:
            raise ImageReadError(
                f"patch {folder}: band {band} is {w} x {h}, which does not resample to the finest band's "
                f"{width} x {height} (sides must be whole multiples of the same factor); fix or remove the patch",
                path=str(folder),
                reason=f"band {band} {w} x {h} vs {width} x {height}",
                kind="inconsistent bands",
            )
    bounds_seen = [(band, b) for band, (_, _, b, _) in headers.items() if b is not None]
    for band, b in bounds_seen[1:]:
        ref_band, ref = bounds_seen[0]
        tolerance = max(abs(ref.right - ref.left) / width, 1e-9)  # one pixel of the finest grid
        if any(abs(x - y) > tolerance for x, y in zip(b, ref)):
            raise ImageReadError(
                f"patch {folder}: band {band} covers {tuple(b)}, band {ref_band} covers {tuple(ref)}; bands of "
                "one patch must cover the same area; fix or remove the patch",
                path=str(folder),
                reason=f"bands {ref_band} and {band} cover different areas",
                kind="inconsistent bands",
            )
    stack = []
    for band in wanted:
        try:
            with rasterio.open(files[band]) as ds:
                array = ds.read(
                    1, out_shape=(height, width), resampling=Resampling.bilinear, masked=ds.nodata is not None
                )
        except (RasterioError, OSError, ValueError, MemoryError) as exc:
            raise _open_error(files[band], exc) from exc
        stack.append(
            array.astype(np.float32).filled(np.nan) if np.ma.isMaskedArray(array) else array.astype(np.float32)
        )
    return Raster(np.stack(stack), tuple(wanted), headers[wanted[0]][3], folder)

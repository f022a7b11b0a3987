"""A seeded synthetic multi-modal, multi-label dataset in BigEarthNet's folder layout (for demos and tests).

Each scene is a land-cover map of 1 to 3 classes that co-occur (towns beside fields, forests around lakes,
coasts with towns), drawn as smooth random regions, and rendered twice from the same map:
  - S2/<name>/<name>_<band>.tif: 12 Sentinel-2 L2A bands (uint16 reflectance x 10000) at BigEarthNet's
    resolutions: B02 B03 B04 B08 at `size` px (10 m), B05 B06 B07 B8A B11 B12 at size/2 (20 m), B01 B09 at
    size/6 (60 m), from a typical spectrum per class with texture and a per-scene illumination gain;
  - S1/<name>/<name>_VV.tif, _VH.tif: Sentinel-1 backscatter (float32 dB) from a typical sigma0 per class, with
    multiplicative speckle (4-look gamma, spatially correlated) and a per-scene incidence offset;
  - <name>_labels_metadata.json next to each: the CORINE level-3 names of the classes covering >= 5% of the
    scene (mapped to the 19-class nomenclature by the reader), and for S1 the S2 partner in
    `corresponding_s2_patch`.
So `list_dataset("bigearthnet-mm", out)` reads it through the real BigEarthNet path (rasterio, band resampling,
composites). The spectra are textbook shapes (water dark in the infrared, vegetation bright at B08, towns bright
and flat), not measurements; the task is learnable but the data are not real. Scene i depends only on
(seed, i): the same seed gives the same pixels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .bigearthnet import LABEL_SUFFIX, PARTNER_KEY
from .errors import DataError
from .synth import prepare_out

_README_MARKER = "fedrsclip synthetic multi-modal dataset"
S2_BANDS_10M = ("B02", "B03", "B04", "B08")
S2_BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
S2_BANDS_60M = ("B01", "B09")
_S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
MIN_COVER = 0.05  # a class covering less of the scene is not in its labels

# class: (CORINE level-3 name, S2 reflectance x 10000 in _S2_ORDER, S1 (VV, VH) in dB)
CLASSES: dict[str, tuple[str, tuple[int, ...], tuple[float, float]]] = {
    "urban": (
        "Discontinuous urban fabric",
        (1200, 1250, 1350, 1450, 1600, 1750, 1850, 1950, 2050, 800, 2300, 2100),
        (-4.0, -11.0),
    ),
    "arable": (
        "Non-irrigated arable land",
        (900, 850, 1150, 1400, 1750, 2200, 2500, 2700, 2900, 900, 2900, 2100),
        (-11.0, -18.0),
    ),
    "pasture": ("Pastures", (500, 450, 800, 550, 1200, 2600, 3100, 3300, 3500, 1000, 2200, 1200), (-12.5, -19.5)),
    "conifer": ("Coniferous forest", (250, 250, 400, 250, 700, 1800, 2200, 2400, 2600, 700, 1200, 550), (-8.0, -14.0)),
    "broadleaf": (
        "Broad-leaved forest",
        (300, 300, 550, 300, 900, 2800, 3400, 3700, 3900, 1000, 1800, 800),
        (-7.0, -12.5),
    ),
    "water": ("Water bodies", (600, 550, 650, 450, 380, 320, 290, 250, 230, 100, 150, 100), (-20.0, -27.0)),
    "sea": ("Sea and ocean", (700, 650, 580, 320, 260, 210, 190, 160, 150, 60, 80, 60), (-23.0, -29.0)),
}
# Scene archetypes: the classes that co-occur, the first always present.
ARCHETYPES: tuple[tuple[str, ...], ...] = (
    ("arable", "pasture", "urban"),
    ("conifer", "broadleaf", "water"),
    ("sea", "urban", "pasture"),
    ("water", "conifer", "pasture"),
    ("urban", "arable", "broadleaf"),
    ("broadleaf", "pasture", "arable"),
)


def _noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise of about unit variance with `cells` features across a size x size grid."""
    grid = rng.standard_normal((cells + 2, cells + 2))
    t = np.linspace(0, cells, size)
    i = np.floor(t).astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def land_cover(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """A map [size, size] of indices into CLASSES (as a list) and the classes covering >= MIN_COVER of it."""
    names = list(CLASSES)
    archetype = ARCHETYPES[int(rng.integers(len(ARCHETYPES)))]
    chosen = [archetype[0]] + [c for c in archetype[1:] if rng.random() < 0.55]
    fields = np.stack(
        [_noise(rng, size, int(rng.integers(2, 5))) + (0.6 if i == 0 else 0.0) for i in range(len(chosen))]
    )
    cover = np.array([names.index(c) for c in chosen])[fields.argmax(0)]
    labels = [n for k, n in enumerate(names) if (cover == k).mean() >= MIN_COVER]
    return cover, labels


def _block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    h, w = x.shape
    return x.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def render_s2(cover: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{band: uint16 array} at the band's BigEarthNet resolution (10 m bands at the map's size)."""
    size = cover.shape[0]
    spectra = np.array([s2 for _, s2, _ in CLASSES.values()], dtype=np.float64)  # [C, 12]
    texture = 1.0 + 0.12 * _noise(rng, size, size // 6) + 0.03 * rng.standard_normal((size, size))
    gain = rng.uniform(0.85, 1.15)
    out = {}
    for b, band in enumerate(_S2_ORDER):
        value = spectra[cover, b] * texture * gain
        factor = 1 if band in S2_BANDS_10M else (2 if band in S2_BANDS_20M else 6)
        out[band] = np.clip(np.rint(_block_mean(value, factor)), 1, 10000).astype(np.uint16)
    return out


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit-mean multiplicative speckle: 4-look gamma, correlated over neighbouring pixels by a [1, 2, 1] / 4
    filter in each direction (ground-range resampling correlates real GRD speckle the same way)."""
    g = np.pad(rng.gamma(4.0, 1.0 / 4.0, (size, size)), 1, mode="reflect")
    g = 0.25 * g[:-2] + 0.5 * g[1:-1] + 0.25 * g[2:]
    return 0.25 * g[:, :-2] + 0.5 * g[:, 1:-1] + 0.25 * g[:, 2:]


def render_s1(cover: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{"VV", "VH": float32 dB arrays}: class sigma0 with texture, speckle (_speckle) and an incidence offset."""
    size = cover.shape[0]
    sigma = np.array([s1 for _, _, s1 in CLASSES.values()], dtype=np.float64)  # [C, 2] dB
    offset = rng.uniform(-1.5, 1.5)
    out = {}
    for p, pol in enumerate(("VV", "VH")):
        db = sigma[cover, p] + offset + 1.5 * _noise(rng, size, size // 8)
        out[pol] = (db + 10.0 * np.log10(_speckle(rng, size))).astype(np.float32)
    return out


def _write_band(path: Path, array: np.ndarray, origin: tuple[float, float], pixel: float) -> None:
    import rasterio
    from rasterio.transform import Affine

    profile = {
        "driver": "GTiff",
        "height": array.shape[0],
        "width": array.shape[1],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": "EPSG:32633",
        "transform": Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1]),
    }  # north-up, `pixel` metres
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array, 1)


def _write_patch(
    folder: Path, bands: dict[str, np.ndarray], origin: tuple[float, float], size: int, meta: dict
) -> None:
    folder.mkdir(parents=True)
    for band, array in bands.items():
        _write_band(folder / f"{folder.name}_{band}.tif", array, origin, 10.0 * size / array.shape[0])
    (folder / f"{folder.name}{LABEL_SUFFIX}").write_text(json.dumps(meta), encoding="utf-8")


def _not_ours(folder: Path) -> Path | None:
    """The first entry of an S1/ or S2/ folder that synth-mm does not write (SYNTH_<S1|S2>_NNNNN/ patch folders
    holding that patch's bands and labels), or None."""
    if not folder.is_dir():
        return folder
    for patch in folder.iterdir():
        if not (patch.is_dir() and re.fullmatch(rf"SYNTH_{folder.name}_\d{{5}}", patch.name)):
            return patch
        for entry in patch.iterdir():
            own = entry.name == f"{patch.name}{LABEL_SUFFIX}" or re.fullmatch(rf"{patch.name}_\w+\.tif", entry.name)
            if not (entry.is_file() and own):
                return entry
    return None


def make_synthetic_mm(out: str | Path, scenes: int = 120, size: int = 60, seed: int = 0, progress: bool = True) -> Path:
    """Write `scenes` paired S2/S1 scenes of size x size px (10 m) under <out>/S2 and <out>/S1; returns out.

    size must be a multiple of 6 (the 60 m bands) from 24 to 1200. <out> must be new, empty, or an earlier
    dataset of this generator (its S1/S2 folders are replaced); anything else is refused with nothing written.
    """
    for name, value, low, high in (("scenes", scenes, 2, 1_000_000), ("size", size, 24, 1200), ("seed", seed, 0, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            raise DataError(
                f"synthetic multi-modal {name} must be an integer from {low}"
                f"{f' to {high}' if high else ' up'}; got {value!r}"
            )
    if size % 6:
        raise DataError(f"synthetic multi-modal size must be a multiple of 6 (10, 20 and 60 m bands); got {size}")
    out = Path(out).expanduser().resolve()
    prepare_out(out, _README_MARKER, "data synth-mm", ("S1", "S2"), _not_ours)
    counts: dict[str, int] = {}
    for i in tqdm(range(scenes), desc="writing synthetic S2/S1 scenes", unit="scene", disable=not progress):
        rng = np.random.default_rng([seed, i])
        cover, classes = land_cover(rng, size)
        labels = [CLASSES[c][0] for c in classes]
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
        origin = (400000.0 + 10.0 * size * (i % 100), 5800000.0 - 10.0 * size * (i // 100))
        coords = {"ulx": origin[0], "uly": origin[1], "lrx": origin[0] + 10.0 * size, "lry": origin[1] - 10.0 * size}
        s2_name, s1_name = f"SYNTH_S2_{i:05d}", f"SYNTH_S1_{i:05d}"
        common = {"labels": labels, "coordinates": coords, "synthetic": True}
        _write_patch(out / "S2" / s2_name, render_s2(cover, rng), origin, size, common)
        _write_patch(out / "S1" / s1_name, render_s1(cover, rng), origin, size, {**common, PARTNER_KEY: s2_name})
    (out / "README.txt").write_text(
        f"{_README_MARKER}\n\n"
        "These patches are SYNTHETIC: land-cover maps drawn by a program (fedrsclip data synth-mm) and rendered\n"
        "as Sentinel-2-like and Sentinel-1-like GeoTIFFs in BigEarthNet's layout; not real satellite data. Use\n"
        "them only for offline demos and tests; scores on them say nothing about real data.\n\n"
        f"scenes: {scenes}\nsize: {size} x {size} px at 10 m\nseed: {seed}\n"
        f"scenes per class: {', '.join(f'{c} {n}' for c, n in sorted(counts.items()))}\n"
        "layout: S2/<patch>/<patch>_<band>.tif, S1/<patch>/<patch>_VV.tif, _VH.tif (list it with --dataset "
        "bigearthnet-mm)\n",
        encoding="utf-8",
    )
    return out

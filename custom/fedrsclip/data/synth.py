"""A deterministic synthetic remote-sensing scene dataset for offline demos and tests.

Each class is drawn with numpy from a handful of random parameters (orientation,
scale, colours, noise), so the task is learnable but not trivial, and needs no
download. The same seed gives byte-identical PNG files.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .errors import DataError

_README_MARKER = "fedrsclip synthetic dataset"

Canvas = np.ndarray  # float array (S, S, 3), values roughly 0..255
Rng = np.random.Generator


class _Grid:
    """Pixel coordinates of one image, centred, in units of the image size."""

    def __init__(self, size: int, rng: Rng):
        t = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
        self.y, self.x = np.meshgrid(t, t, indexing="ij")
        self.size = size
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        # (u, v): coordinates rotated by a random angle, so scenes have no fixed orientation.
        self.u = c * self.x + s * self.y
        self.v = -s * self.x + c * self.y


def _noise(rng: Rng, size: int, cells: int) -> np.ndarray:
    """Smooth value noise (about unit variance) with `cells` features across the image."""
    cells = max(1, int(cells))
    g = rng.standard_normal((cells + 2, cells + 2))
    t = np.linspace(0, cells, size)
    i = np.floor(t).astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _jitter(rng: Rng, color: tuple[float, float, float], amount: float = 12.0) -> np.ndarray:
    return np.asarray(color, dtype=np.float64) + rng.normal(0, amount, 3)


def _paint(img: Canvas, mask: np.ndarray, color: np.ndarray | tuple) -> None:
    img[mask] = np.broadcast_to(np.asarray(color, dtype=np.float64), img[mask].shape)


def _background(g: _Grid, rng: Rng, color: tuple, texture: float, cells: int) -> Canvas:
    base = _jitter(rng, color)
    n = _noise(rng, g.size, cells)
    return base[None, None, :] * (1 + texture * n)[..., None]


def _table(rng: Rng, palette: list[tuple], shape: tuple[int, ...]) -> np.ndarray:
    """Random colours from a palette, jittered, in an array of `shape`."""
    idx = rng.integers(0, len(palette), size=shape)
    return np.asarray(palette, dtype=np.float64)[idx] + rng.normal(0, 10, (*shape, 3))


def _cell(coord: np.ndarray, period: float, table_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell index (wrapped into a table) and position inside the cell (0..1)."""
    q = coord / period
    idx = np.floor(q).astype(np.int64)
    return idx % table_size, q - idx


# --- one drawing function per class ---------------------------------------------------


def _farmland(g: _Grid, rng: Rng) -> Canvas:
    w = rng.uniform(0.08, 0.2)
    h = rng.uniform(0.25, 0.7)
    palette = [(80, 130, 50), (110, 150, 60), (140, 110, 70), (170, 150, 90), (60, 110, 45), (190, 170, 100)]
    table = _table(rng, palette, (32, 32))
    bi, bf = _cell(g.u + 5, w, 32)
    ci, cf = _cell(g.v + 5, h, 32)
    img = table[bi, ci]
    rows = 1 + 0.08 * np.sin(2 * np.pi * bf * rng.uniform(4, 9))  # crop rows
    img = img * rows[..., None]
    border = (bf < 0.05) | (cf < 0.02)
    _paint(img, border, _jitter(rng, (95, 85, 65)))
    return img


def _forest(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (35, 75, 38), 0.15, 3)
    crowns = _noise(rng, g.size, g.size // rng.integers(3, 5))
    img = img * (0.75 + 0.25 * np.tanh(crowns))[..., None]
    _paint(img, crowns < -1.1, _jitter(rng, (18, 35, 20), 5))  # gaps and shadows
    return img


def _lake(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (85, 120, 60), 0.18, 5)
    cx, cy = rng.uniform(-0.12, 0.12, 2)
    a, b = rng.uniform(0.22, 0.4, 2)
    r = np.sqrt(((g.u - cx) / a) ** 2 + ((g.v - cy) / b) ** 2) + 0.2 * _noise(rng, g.size, 3)
    shore = (r >= 1) & (r < 1.08)
    _paint(img, shore, _jitter(rng, (150, 140, 100)))
    water = r < 1
    deep = _jitter(rng, (25, 55, 95), 8)
    shallow = _jitter(rng, (55, 100, 130), 8)
    depth = np.clip(1 - r, 0, 1)[..., None]
    img = np.where(water[..., None], deep * depth + shallow * (1 - depth), img)
    return img


def _dense_residential(g: _Grid, rng: Rng) -> Canvas:
    c = rng.uniform(0.09, 0.15)
    img = _background(g, rng, (95, 125, 75), 0.1, 6)  # yards
    roofs = _table(rng, [(150, 150, 150), (170, 80, 60), (120, 70, 55), (90, 90, 95), (200, 190, 180)], (64, 64))
    iu, fu = _cell(g.u + 5, c, 64)
    iv, fv = _cell(g.v + 5, c, 64)
    m = rng.uniform(0.12, 0.22)
    house = (fu > m) & (fu < 1 - m) & (fv > m) & (fv < 1 - m)
    roof = roofs[iu, iv] * np.where(fu < 0.5, 0.85, 1.0)[..., None]  # gable shading
    img = np.where(house[..., None], roof, img)
    _, road = _cell(g.u + 5, 2 * c, 64)
    _paint(img, road < 0.1, _jitter(rng, (105, 105, 108), 8))
    return img


def _desert(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (205, 175, 125), 0.05, 4)
    f = rng.uniform(3, 7)
    dunes = np.sin(2 * np.pi * (g.u * f + 0.3 * _noise(rng, g.size, 3)))
    ripples = np.sin(2 * np.pi * g.u * f * rng.uniform(5, 8))
    return img * (1 + 0.12 * dunes + 0.03 * ripples)[..., None]


def _beach(g: _Grid, rng: Rng) -> Canvas:
    s = g.v + rng.uniform(-0.2, 0.2) + 0.06 * _noise(rng, g.size, 3)
    img = _background(g, rng, (215, 195, 150), 0.05, 6)
    sea = _jitter(rng, (40, 100, 150), 10)
    depth = np.clip(s / 0.5, 0, 1)[..., None]
    water = sea * (1 - 0.4 * depth) * (1 + 0.05 * np.sin(2 * np.pi * s * 25))[..., None]
    img = np.where((s > 0)[..., None], water, img)
    _paint(img, (s > 0) & (s < 0.03 + 0.015 * np.sin(g.u * 40)), _jitter(rng, (235, 240, 240), 5))
    _paint(img, (s <= 0) & (s > -0.05), _jitter(rng, (170, 150, 115)))  # wet sand
    _paint(img, s < -0.38, _jitter(rng, (80, 115, 60)))  # dune vegetation
    return img


def _parking_lot(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (105, 105, 108), 0.06, 5)
    p = rng.uniform(0.14, 0.22)
    q = rng.uniform(0.045, 0.065)
    occupancy = rng.uniform(0.5, 0.95)
    cars = _table(
        rng,
        [(230, 230, 230), (30, 30, 35), (170, 30, 30), (40, 60, 150), (170, 170, 175), (120, 120, 125)],
        (64, 64, 2),
    )
    occupied = rng.random((64, 64, 2)) < occupancy
    ri, rf = _cell(g.v + 5, p, 64)
    ki, kf = _cell(g.u + 5, q, 64)
    side = (rf >= 0.5).astype(np.int64)
    local = np.where(side == 1, rf - 0.55, rf - 0.1) / 0.35  # 0..1 inside a stall row
    in_row = (local >= 0) & (local <= 1)
    _paint(img, in_row & (kf < 0.08), _jitter(rng, (225, 225, 215), 5))  # stall lines
    car = in_row & (kf > 0.2) & (kf < 0.85) & (local > 0.08) & (local < 0.92) & occupied[ri, ki, side]
    img = np.where(car[..., None], cars[ri, ki, side], img)
    return img


def _river(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (90, 120, 65), 0.2, 5)
    center = rng.uniform(0.05, 0.18) * np.sin(2 * np.pi * rng.uniform(0.6, 1.8) * g.u + rng.uniform(0, 2 * np.pi))
    center = center + 0.04 * _noise(rng, g.size, 2)
    w = rng.uniform(0.04, 0.1)
    d = np.abs(g.v - center)
    water_color = _jitter(rng, [(55, 85, 115), (65, 95, 85), (95, 90, 70)][rng.integers(0, 3)], 8)
    _paint(img, (d >= w) & (d < w * 1.3), _jitter(rng, (140, 125, 95)))  # banks
    _paint(img, d < w, water_color)
    return img


def _runway(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (120, 140, 85), 0.12, 4)
    w = rng.uniform(0.06, 0.1)
    off = rng.uniform(-0.15, 0.15)
    v = g.v - off
    _paint(img, np.abs(v - rng.choice([-1, 1]) * 0.28) < w * 0.35, _jitter(rng, (115, 115, 115)))  # taxiway
    strip = np.abs(v) < w
    _paint(img, strip, _jitter(rng, (120, 120, 122), 8))
    dash = (np.abs(v) < w * 0.07) & (_cell(g.u + 5, 0.08, 64)[1] < 0.5)
    edge = (np.abs(v) > w * 0.82) & (np.abs(v) < w * 0.9)
    end = rng.choice([-1, 1]) * g.u
    threshold = (end > 0.36) & (end < 0.44) & (np.abs(v) < w * 0.75) & (_cell(v + 5, w / 4, 64)[1] < 0.5)
    _paint(img, dash | edge | threshold, _jitter(rng, (235, 235, 235), 5))
    return img


def _storage_tanks(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (165, 160, 145), 0.08, 6)
    tanks: list[tuple[float, float, float]] = []
    for _ in range(60):  # rejection sampling of non-overlapping tanks
        if len(tanks) >= rng.integers(3, 9):
            break
        r = rng.uniform(0.06, 0.13)
        cx, cy = rng.uniform(-0.5 + r, 0.5 - r, 2)
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr + 0.02) ** 2 for x, y, rr in tanks):
            tanks.append((cx, cy, r))
    shadow_dx, shadow_dy = rng.uniform(-0.03, 0.03, 2)
    for cx, cy, r in tanks:
        dist = np.sqrt((g.x - cx - shadow_dx) ** 2 + (g.y - cy - shadow_dy) ** 2)
        _paint(img, dist < r, _jitter(rng, (70, 70, 70), 5))
    for cx, cy, r in tanks:
        dist = np.sqrt((g.x - cx) ** 2 + (g.y - cy) ** 2)
        top = _jitter(rng, (235, 235, 230), 8)
        shade = 1 - 0.15 * ((g.x - cx) + (g.y - cy)) / r
        img = np.where((dist < r)[..., None], top * shade[..., None], img)
        _paint(img, (dist > r * 0.9) & (dist < r), _jitter(rng, (150, 150, 150), 5))
    return img


def _circular_farmland(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (175, 150, 110), 0.08, 5)
    d = rng.uniform(0.3, 0.5)
    iu, fu = _cell(g.u + 5 + rng.uniform(0, 1), d, 16)
    iv, fv = _cell(g.v + 5 + rng.uniform(0, 1), d, 16)
    du, dv = (fu - 0.5) * d, (fv - 0.5) * d
    dist = np.sqrt(du**2 + dv**2)
    crops = _table(rng, [(70, 130, 50), (100, 150, 60), (150, 160, 80), (60, 110, 45)], (16, 16))
    angle = np.arctan2(dv, du)
    harvested = rng.random((16, 16)) < 0.35
    cut = harvested[iu, iv] & (angle > 0)  # a half-harvested pivot field
    field = (dist < d * rng.uniform(0.4, 0.48))[..., None]
    crop = crops[iu, iv] * (1 + 0.05 * np.sin(dist * 200))[..., None]
    img = np.where(field & ~cut[..., None], crop, img)
    return img


def _meadow(g: _Grid, rng: Rng) -> Canvas:
    img = _background(g, rng, (125, 160, 80), 0.08, 3)
    patches = _noise(rng, g.size, 4)
    img = np.where((patches > 0.8)[..., None], img * np.array([1.15, 1.05, 0.85]), img)
    grass = _noise(rng, g.size, g.size // 2)
    img = img * (1 + 0.05 * grass)[..., None]
    _paint(img, _noise(rng, g.size, g.size // 3) > 2.0, _jitter(rng, (60, 90, 45), 5))  # shrubs
    return img


SCENES: dict[str, Callable[[_Grid, Rng], Canvas]] = {
    "farmland": _farmland,
    "forest": _forest,
    "lake": _lake,
    "dense_residential": _dense_residential,
    "desert": _desert,
    "beach": _beach,
    "parking_lot": _parking_lot,
    "river": _river,
    "runway": _runway,
    "storage_tanks": _storage_tanks,
    "circular_farmland": _circular_farmland,
    "meadow": _meadow,
}
MAX_CLASSES = len(SCENES)


def render_scene(name: str, size: int, rng: Rng) -> np.ndarray:
    """One (size, size, 3) uint8 image of scene `name`, with random variation from rng."""
    g = _Grid(size, rng)
    img = SCENES[name](g, rng)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3)  # brightness, colour cast
    img = img + rng.normal(0, rng.uniform(2, 9), img.shape)  # sensor noise
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.rot90(img, k=int(rng.integers(0, 4)))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Fixed options and no metadata chunks keep the bytes reproducible.
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def prepare_out(
    out: Path, marker: str, command: str, folders: Sequence[str], foreign: Callable[[Path], Path | None]
) -> None:
    """Make `out` ready for a synthetic dataset of `command` (e.g. "data synth"): a new or empty folder, or an earlier
    dataset of the same command (its README.txt starts with `marker`), of which only the `folders` it wrote are
    removed, so stale files from a larger run cannot leak into listings. `foreign(folder)` names the first entry of
    such a folder the command did not write, or None. Raises DataError, writing and deleting nothing, otherwise."""
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise DataError(f"synthetic dataset output {out} is a file; choose a folder path")
    if not [e for e in out.iterdir() if not e.name.startswith(".")]:
        return
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(marker)):
        raise DataError(
            f"{out} exists and is not an empty folder or an earlier dataset of fedrsclip {command}; "
            "choose a new --out folder (nothing was written)"
        )
    present = [out / name for name in folders if (out / name).exists()]
    for folder in present:
        entry = foreign(folder)
        if entry is not None:
            raise DataError(
                f"{entry} was not written by fedrsclip {command}: move it out of {out}, or choose a "
                "new --out folder (nothing was written)"
            )
    for folder in present:
        shutil.rmtree(folder)


def _not_ours(folder: Path) -> Path | None:
    """The first entry of a class folder that `data synth` does not write (<class>_NNNN.png), or None."""
    for entry in folder.iterdir() if folder.is_dir() else [folder]:
        if not (entry.is_file() and re.fullmatch(rf"{re.escape(folder.name)}_\d{{4}}\.png", entry.name)):
            return entry
    return None


def make_synthetic(
    out: str | Path,
    classes: int = 10,
    per_class: int = 40,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write an ImageFolder <out>/<class>/<class>_NNNN.png of synthetic scenes.

    The first `classes` of SCENES are used (at most MAX_CLASSES). Image i of a
    class depends only on (seed, class, i), so the same seed gives byte-identical
    files. Also writes <out>/README.txt. Returns the resolved output folder.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or not 2 <= classes <= MAX_CLASSES:
        raise DataError(f"synthetic classes must be an integer from 2 to {MAX_CLASSES}, got {classes!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise DataError(f"images per class must be a positive integer, got {per_class!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 4096:
        raise DataError(f"synthetic image size must be an integer from 16 to 4096 pixels, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out).expanduser().resolve()
    prepare_out(out, _README_MARKER, "data synth", SCENES, _not_ours)
    names = list(SCENES)[:classes]
    jobs = [(ci, name, i) for ci, name in enumerate(names) for i in range(per_class)]
    for name in names:
        (out / name).mkdir(exist_ok=True)
    for ci, name, i in tqdm(jobs, desc="writing synthetic images", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, ci, i])
        (out / name / f"{name}_{i:04d}.png").write_bytes(_png_bytes(render_scene(name, size, rng)))
    (out / "README.txt").write_text(
        f"{_README_MARKER}\n\n"
        "These images are SYNTHETIC: remote-sensing-like scenes drawn by a program\n"
        "(fedrsclip data synth), not real aerial or satellite imagery. Use them only for\n"
        "offline demos and tests; accuracy on them says nothing about real data.\n\n"
        f"classes: {', '.join(names)}\n"
        f"images per class: {per_class}\nsize: {size}x{size}\nseed: {seed}\n"
        "layout: <class>/<class>_NNNN.png (list it with --dataset synthetic)\n",
        encoding="utf-8",
    )
    return out

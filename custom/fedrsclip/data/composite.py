"""What the image encoder sees: a modality's band composite and radiometric scaling, rendered to 8-bit RGB.

A *modality* (rgb, s2, s1) knows its band names, the band order of files that carry no names, its named
composites and the display range of each band. The settings `data.modality`, `data.composite`, `data.scaling`,
`data.scale_range`, `data.stretch_low/high`, `data.linear_to_db` choose among them (README "Your imagery");
`image_settings()` resolves them into one `ImageSettings`, whose `signature()` is part of the feature-cache key.

Scaling (per output channel, then clipped to 0..255):
  auto        8-bit data as they are. Wider integers by ONE scale for all channels, 0 .. their bit depth, found
              per image as the smallest 2^k - 1 (k >= 8) at or above the maximum of the composite's channels: a
              12-bit image in a 16-bit container is shown as 0..4095, like its 8-bit rendering (brightness and
              colour balance kept, nothing clipped). Negative integers start at their minimum. Floats within 0..1
              as they are, other floats from min(0, minimum) to the maximum.
  range       a fixed range per channel (Sentinel-2 reflectance x 10000, Sentinel-1 backscatter in dB):
              comparable brightness across images, as a sensor would show them.
  percentile  each channel stretched between its own stretch_low and stretch_high percentiles (2 and 98).
Nodata pixels (NaN) become black. A rendering that is near-black or mostly saturated warns
(`DynamicRangeWarning`): the scaling does not fit the data.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import DataError, ImageReadError
from .raster import Raster, normalise_band_name

SCALINGS: tuple[str, ...] = ("auto", "range", "percentile")
DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300; decoding costs ~4 bytes per pixel and band

# Thresholds of the dynamic-range warning, on the rendered 0..255 values of valid (not nodata) pixels.
_DARK_FRACTION, _DARK_LEVEL = 0.99, 10  # 99% of values at or below 10: near-black
_SATURATED_FRACTION = 0.5  # half of the values at 255: saturated


class DynamicRangeWarning(UserWarning):
    """A rendered image is near-black or mostly saturated: the scaling does not fit the data."""


@dataclass(frozen=True)
class Modality:
    """A kind of imagery: its bands, conventions, named composites and display ranges."""

    name: str
    description: str
    bands: tuple[str, ...] | None  # every band name this modality has; None: any
    default_composite: str | None  # a key of `composites`; None: the file's own colours (rgb)
    default_scaling: str
    composites: dict[str, tuple[str, ...]] = field(default_factory=dict)
    conventions: dict[int, tuple[str, ...]] = field(default_factory=dict)  # band order by count, unnamed files
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # display range per band or expression


_S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_S2_L2A = tuple(b for b in _S2_L1C if b != "B10")

MODALITIES: dict[str, Modality] = {
    "rgb": Modality("rgb", "photographs and aerial RGB(+NIR) images of any bit depth", None, None, "auto"),
    "s2": Modality(
        "s2",
        "Sentinel-2 multispectral reflectance (L1C or L2A, values x 10000)",
        _S2_L1C,
        "true-color",
        "range",
        composites={
            "true-color": ("B04", "B03", "B02"),
            "false-color": ("B08", "B04", "B03"),  # vegetation red
            "swir": ("B12", "B8A", "B04"),
            "agriculture": ("B11", "B08", "B02"),
        },
        # EuroSAT MS files hold the 13 L1C bands in this order; L2A products drop B10.
        conventions={13: _S2_L1C, 12: _S2_L2A},
        # Display ranges of surface reflectance x 10000: visible bands are dark (vegetation ~300-1000, bright soil
        # and towns ~2000), near infrared is bright over vegetation (3000-6000), short-wave infrared in between.
        ranges={
            **{b: (0.0, 3000.0) for b in ("B01", "B02", "B03", "B04")},
            **{b: (0.0, 6000.0) for b in ("B05", "B06", "B07", "B08", "B8A", "B09")},
            "B10": (0.0, 300.0),
            "B11": (0.0, 5000.0),
            "B12": (0.0, 4000.0),
        },
    ),
    "s1": Modality(
        "s1",
        "Sentinel-1 SAR backscatter (sigma0 in dB; data.linear_to_db for linear power)",
        ("VV", "VH"),
        "vv-vh-diff",
        "range",
        composites={"vv-vh-diff": ("VV", "VH", "VV-VH"), "vv": ("VV",), "vh": ("VH",)},
        conventions={2: ("VV", "VH")},
        # Land backscatter lies mostly within these dB ranges (water is darker, towns brighter); VV-VH, the
        # log of the linear ratio, between 0 and 15 dB.
        ranges={"VV": (-25.0, 0.0), "VH": (-30.0, -5.0), "VV-VH": (0.0, 15.0)},
    ),
}

_CHANNEL = re.compile(r"^\s*([A-Za-z0-9]+)\s*(?:([-/])\s*([A-Za-z0-9]+))?\s*$")


@dataclass(frozen=True)
class ImageSettings:
    """Resolved settings of the path from a file to the encoder's 3-channel image (see the module docstring)."""

    modality: str = "rgb"
    composite: tuple[str, ...] | None = None  # 1 or 3 channel specs ("B04", "VV-VH"); None: the file's colours
    scaling: str = "auto"
    ranges: tuple[tuple[float, float], ...] | None = None  # one per channel (scaling "range")
    percentiles: tuple[float, float] = (2.0, 98.0)
    linear_to_db: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def signature(self) -> str:
        """A stable text of every setting that changes the pixels (a part of the feature-cache key)."""
        return json.dumps(asdict(self), sort_keys=True)

    def bands(self) -> tuple[str, ...]:
        """The band names the composite reads (what a band-per-file patch must hold)."""
        if self.composite is None:
            raise DataError(
                f"modality {self.modality!r} has no band composite; band-per-file patches need one: "
                "set data.modality to s2 or s1, or data.composite to three bands"
            )
        names: list[str] = []
        for spec in self.composite:
            a, _, b = _parse_channel(spec, "data.composite")
            names += [a] + ([b] if b else [])
        return tuple(dict.fromkeys(names))


def _parse_channel(spec: str, setting: str) -> tuple[str, str | None, str | None]:
    match = _CHANNEL.match(spec)
    if not match:
        raise DataError(f"{setting}: {spec!r} is not a band or an expression of two bands (B04, VV-VH, VV/VH)")
    a, op, b = match.groups()
    return normalise_band_name(a), op, normalise_band_name(b) if b else None


def _spec(a: str, op: str | None, b: str | None) -> str:
    return a if op is None else f"{a}{op}{b}"


def parse_composite(text: str, modality: Modality | None) -> tuple[str, ...]:
    """Three (or one, shown as grey) comma-separated channels, or the name of one of the modality's composites."""
    name = text.strip().lower()
    if modality is not None and name in modality.composites:
        return modality.composites[name]
    owners = [m.name for m in MODALITIES.values() if name in m.composites]
    if owners and modality is not None:
        raise DataError(
            f"data.composite {name!r} is a composite of modality {owners[0]}, not {modality.name}; set "
            f"data.modality={owners[0]} (or name the bands, e.g. 1,2,3)"
        )
    parts = [p for p in text.split(",")]
    if len(parts) not in (1, 3):
        presets = f" or one of {', '.join(modality.composites)}" if modality and modality.composites else ""
        raise DataError(f"data.composite must name 3 channels (e.g. B08,B04,B03) or 1 (grey){presets}; got {text!r}")
    return tuple(_spec(*_parse_channel(p, "data.composite")) for p in parts)


def parse_pairs(text: str, setting: str) -> tuple[tuple[float, float], ...]:
    """ "low,high" or "l,h;l,h;l,h" -> ((low, high), ...); every low < high, all finite."""
    pairs = []
    for chunk in text.split(";"):
        try:
            low, high = (float(x) for x in chunk.split(","))
        except ValueError:
            raise DataError(
                f"{setting} must be 'low,high' or three 'low,high' pairs separated by ';' "
                f"(e.g. -25,0;-30,-5;0,15); got {text!r}"
            ) from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise DataError(f"{setting}: each range needs finite low < high; got {chunk.strip()!r}")
        pairs.append((low, high))
    return tuple(pairs)


def image_settings(
    modality: str = "auto",
    composite: str | None = None,
    scaling: str | None = None,
    scale_range: str | None = None,
    stretch: tuple[float, float] = (2.0, 98.0),
    linear_to_db: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dataset_modality: str | None = None,
) -> ImageSettings:
    """Resolve the data.* image settings; "auto" takes `dataset_modality` (the manifest's), else rgb.

    Raises DataError naming the setting (an unknown modality, composite or scaling, a band the modality does not
    have, a range that is missing or malformed).
    """
    if modality != "auto" and modality not in MODALITIES:
        raise DataError(f"data.modality must be auto or one of {', '.join(MODALITIES)}; got {modality!r}")
    name = dataset_modality if modality == "auto" else modality
    mod = MODALITIES.get(name or "rgb")
    if mod is None:
        raise DataError(
            f"the manifest names modality {name!r}, which this fedrsclip does not know "
            f"({', '.join(MODALITIES)}); set data.modality"
        )
    if scaling is not None and scaling not in SCALINGS:
        raise DataError(f"data.scaling must be one of {', '.join(SCALINGS)}; got {scaling!r}")
    low, high = (float(x) for x in stretch)
    if not (0.0 <= low < high <= 100.0):
        raise DataError(
            f"data.stretch_low and data.stretch_high must satisfy 0 <= low < high <= 100; got {low}, {high}"
        )
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"data.max_pixels must be a positive integer; got {max_pixels!r}")

    channels = (
        parse_composite(composite, mod)
        if composite
        else (mod.composites[mod.default_composite] if mod.default_composite else None)
    )
    if channels is not None and mod.bands is not None:
        for spec in channels:
            a, _, b = _parse_channel(spec, "data.composite")
            for band in (a, b):
                if band and band not in mod.bands and not band.isdigit():
                    raise DataError(
                        f"data.composite: modality {mod.name} has no band {band} (its bands: "
                        f"{', '.join(mod.bands)}); set data.composite to bands it has"
                    )
    scaling = scaling or mod.default_scaling
    ranges = None
    if scaling == "range":
        if scale_range:
            ranges = parse_pairs(scale_range, "data.scale_range")
            wanted = len(channels) if channels else 3
            if len(ranges) not in (1, wanted):
                raise DataError(
                    f"data.scale_range gives {len(ranges)} ranges for {wanted} channels; give 1 (all "
                    f"channels) or {wanted}"
                )
            if len(ranges) == 1:
                ranges = ranges * wanted
        elif channels is None:
            raise DataError(
                f"data.scaling is range but modality {mod.name} has no default display range: set "
                "data.scale_range (e.g. 0,4095 for 12-bit data) or data.scaling=auto"
            )
        else:
            unknown = [c for c in channels if c not in mod.ranges]
            if unknown:
                raise DataError(
                    f"data.scaling is range but {', '.join(unknown)} has no default display range "
                    f"in modality {mod.name}: set data.scale_range (one 'low,high' per channel, "
                    "separated by ';') or data.scaling=percentile"
                )
            ranges = tuple(mod.ranges[c] for c in channels)
    return ImageSettings(mod.name, channels, scaling, ranges, (low, high), bool(linear_to_db), int(max_pixels))


def settings_from_config(data, dataset_modality: str | None = None) -> ImageSettings:
    """ImageSettings from a DataConfig (`fedrsclip.config`) and the manifest's modality."""
    return image_settings(
        data.modality,
        data.composite,
        data.scaling,
        data.scale_range,
        (data.stretch_low, data.stretch_high),
        data.linear_to_db,
        data.max_pixels,
        dataset_modality,
    )


def convention_for(settings: ImageSettings) -> dict[int, tuple[str, ...]]:
    """Band names by band count for files without names, in the settings' modality."""
    return MODALITIES[settings.modality].conventions


def _natural_channels(raster: Raster) -> tuple[str, ...]:
    names = raster.names
    if all(c in names for c in ("R", "G", "B")):
        return ("R", "G", "B")
    if len(names) in (1, 2):  # grey, or grey + alpha
        return (names[0],)
    if len(names) in (3, 4):  # RGB, RGB + NIR or alpha, in band order
        return names[:3]
    raise ImageReadError(
        f"{raster.source} has {len(names)} bands and no band names this modality knows ({', '.join(names)}); "
        "set data.modality (s2 for Sentinel-2 band order) or data.composite to three band numbers (e.g. 4,3,2)",
        path=str(raster.source),
        reason=f"{len(names)} unnamed bands",
        kind="missing band",
    )


def _channel(raster: Raster, spec: str) -> np.ndarray:
    a, op, b = _parse_channel(spec, "data.composite")
    try:
        first = raster.band(a)
        second = raster.band(b) if b else None
    except KeyError as exc:
        raise ImageReadError(
            f"{raster.source} has no band {exc.args[0]} (its bands: {', '.join(raster.names)}), which "
            f"data.composite needs for the channel {spec}; choose bands it has with --set data.composite=...",
            path=str(raster.source),
            reason=f"band {exc.args[0]} missing",
            kind="missing band",
        ) from None
    if op is None:
        return first
    with np.errstate(divide="ignore", invalid="ignore"):
        first, second = first.astype(np.float32), second.astype(np.float32)
        out = first - second if op == "-" else first / second
    return np.where(np.isfinite(out), out, np.nan).astype(np.float32)


def select_channels(raster: Raster, settings: ImageSettings) -> tuple[np.ndarray, tuple[str, ...], np.ndarray | None]:
    """The composite's channels [C, H, W] (float32, NaN = nodata), their specs, and the alpha weight if any.

    Raises ImageReadError (kind "missing band") when the composite names a band the raster lacks.
    """
    if settings.linear_to_db:
        with np.errstate(divide="ignore", invalid="ignore"):
            data = (10.0 * np.log10(np.maximum(raster.data, 1e-10))).astype(np.float32)
        raster = Raster(data, raster.names, "float32", raster.source)
    specs = settings.composite or _natural_channels(raster)
    channels = np.stack([_channel(raster, s) for s in specs])  # uint8 stays uint8 (the fast path of render)
    alpha = None
    if settings.composite is None and "A" in raster.names:
        a = raster.band("A")
        alpha = np.clip(a / (255.0 if raster.dtype == "uint8" else max(float(np.nanmax(a)), 1.0)), 0.0, 1.0)
    return channels, tuple(specs), alpha


def render(raster: Raster, settings: ImageSettings) -> np.ndarray:
    """The encoder's image of a raster: uint8 [H, W, 3].

    Raises ImageReadError (kind "missing band") when the composite names a band the raster lacks; warns
    DynamicRangeWarning when the result is near-black or mostly saturated.
    """
    channels, specs, alpha = select_channels(raster, settings)
    if channels.dtype == np.uint8 and settings.scaling == "auto" and alpha is None:  # 8-bit photos as they are
        out = channels if channels.shape[0] == 3 else np.repeat(channels, 3, axis=0)
        _check_dynamic_range(out, None, raster, settings)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1))
    channels = channels.astype(np.float32)
    valid = np.isfinite(channels)
    if settings.scaling == "range":
        lows = np.array([r[0] for r in settings.ranges], dtype=np.float32)[:, None, None]
        highs = np.array([r[1] for r in settings.ranges], dtype=np.float32)[:, None, None]
    elif settings.scaling == "percentile":
        lows = np.empty((len(specs), 1, 1), np.float32)
        highs = np.empty_like(lows)
        for i, ch in enumerate(channels):
            values = ch[np.isfinite(ch)]
            lo, hi = np.percentile(values, settings.percentiles) if values.size else (0.0, 1.0)
            lows[i], highs[i] = lo, hi if hi > lo else lo + 1.0
    elif raster.dtype == "uint8" and all(_parse_channel(s, "")[1] is None for s in specs):  # 8-bit with alpha
        lows, highs = np.float32(0.0), np.float32(255.0)
    else:  # auto for wide data: one scale for every channel (see the module docstring)
        lo, hi = _auto_range(channels[valid], raster.dtype)
        lows, highs = np.float32(lo), np.float32(hi)
    scaled = np.clip((channels - lows) / (highs - lows), 0.0, 1.0)
    if alpha is not None:
        scaled = scaled * alpha
    scaled = np.where(valid, scaled, 0.0)
    out = np.rint(scaled * 255.0).astype(np.uint8)
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    _check_dynamic_range(out, valid.all(axis=0), raster, settings)
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _auto_range(values: np.ndarray, dtype: str) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(np.dtype(dtype), np.integer):
        depth = max(8, math.ceil(math.log2(max(high, 0.0) + 1.0)))
        return min(0.0, low), float(2**depth - 1)
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    low = min(0.0, low)
    return low, high if high > low else low + 1.0


def _check_dynamic_range(out: np.ndarray, valid: np.ndarray | None, raster: Raster, settings: ImageSettings) -> None:
    values = out if valid is None or valid.all() or not valid.any() else out[:, valid]
    if values.size == 0:
        return
    how = f"data.scaling={settings.scaling}" + (
        f", ranges {';'.join(f'{lo:g},{hi:g}' for lo, hi in settings.ranges)}" if settings.ranges else ""
    )
    hint = f"look at it with `fedrsclip data preview {raster.source}` and adjust data.scaling / data.scale_range"
    if float((values <= _DARK_LEVEL).mean()) >= _DARK_FRACTION:
        warnings.warn(
            f"{raster.source} renders near-black ({_DARK_FRACTION:.0%} of values <= {_DARK_LEVEL} of "
            f"255 with {how}); {hint}",
            DynamicRangeWarning,
            stacklevel=3,
        )
    elif float((values == 255).mean()) > _SATURATED_FRACTION:
        warnings.warn(
            f"{raster.source} renders saturated ({(values == 255).mean():.0%} of values at 255 with {how}); {hint}",
            DynamicRangeWarning,
            stacklevel=3,
        )


def describe(settings: ImageSettings) -> str:
    """One line: modality, composite and scaling, for logs and the preview command."""
    comp = ",".join(settings.composite) if settings.composite else "the file's own colours"
    scale = settings.scaling
    if settings.ranges:
        scale += " " + ";".join(f"{lo:g},{hi:g}" for lo, hi in settings.ranges)
    elif settings.scaling == "percentile":
        scale += f" {settings.percentiles[0]:g}-{settings.percentiles[1]:g}%"
    return f"modality {settings.modality}, composite {comp}, scaling {scale}"


def modality_table() -> Sequence[str]:
    """Lines describing every modality's composites and default ranges (for `fedrsclip data preview --list`)."""
    lines = []
    for mod in MODALITIES.values():
        lines.append(f"{mod.name}: {mod.description}; default scaling {mod.default_scaling}")
        for name, chans in mod.composites.items():
            default = " (default)" if name == mod.default_composite else ""
            lines.append(f"  {name}{default}: {','.join(chans)}")
    return lines


def check_image_settings(data) -> None:
    """Validate a DataConfig's image settings where they enter (config load), raising ValueError naming the setting.

    With modality auto the manifest decides the modality later, so only what holds for every modality is checked
    here (syntax, choices, numbers); `settings_from_config` checks the rest when the manifest is known.
    """
    for name in ("stretch_low", "stretch_high"):
        value = getattr(data, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise DataError(f"data.{name} must be a number between 0 and 100; got {value!r}")
    if data.modality == "auto":
        if data.composite:
            for part in data.composite.split(","):
                _parse_channel(part, "data.composite")
        if data.scaling is not None and data.scaling not in SCALINGS:
            raise DataError(f"data.scaling must be one of {', '.join(SCALINGS)}; got {data.scaling!r}")
        if data.scale_range:
            parse_pairs(data.scale_range, "data.scale_range")
        image_settings(
            "rgb", None, None, None, (data.stretch_low, data.stretch_high), data.linear_to_db, data.max_pixels
        )
    else:
        settings_from_config(data)

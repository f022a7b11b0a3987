"""The sites' modalities of a multi-modal federation, "s2,s1,s2+s1": the one parser of that list, for every command
(demo, job, experiment, data partition: --modalities) and the setting (multimodal.modalities).

Each item is one site's modalities ("s2+s1": a site holding both, paired by scene); a list shorter than the number
of sites is repeated over them (`s2,s1` alternates).
"""

from __future__ import annotations

from collections.abc import Sequence

from .composite import MODALITIES
from .errors import DataError

SYNTHETIC_MODALITIES = ("s2", "s1")  # what each synthetic S2/S1 scene is rendered as (fedrsclip.data.synth_mm)

# How the list is named to the user: the command-line option and the setting it sets (one list, one parser).
MODALITIES_OPTION = "--modalities (multimodal.modalities)"
EXAMPLE = "e.g. s2,s1 (alternating over the sites) or s2,s1,s2+s1 (s2+s1: a site holding both, paired by scene)"


def parse_site_modalities(
    spec: str | Sequence[str], num_sites: int | None = None, available: Sequence[str] | None = None
) -> list[tuple[str, ...]]:
    """The per-site modality tuples of "s2,s1,s2+s1" (or a list of such items): the one parser of the list, for
    every command and setting that takes it (`MODALITIES_OPTION`).

    num_sites: the federation's sites; the items are repeated to that many (a shorter list alternates), and more
    items than sites are refused (an item no site would get). None: the items as given.
    available: the modalities the data can have (default: every modality with a band composite,
    `composite.MODALITIES`). Returns [num_sites or len(items)] tuples, each a site's modalities, its first the
    modality of its records.
    DataError naming `MODALITIES_OPTION` for an empty list or item, an unknown or unavailable modality, a modality
    named twice in an item, or more items than sites.
    """
    known = tuple(MODALITIES) if available is None else tuple(available)
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else [str(x).strip() for x in spec]
    if not any(items):
        raise DataError(f"{MODALITIES_OPTION} is empty: give one item per site, {EXAMPLE}")
    if not all(items):
        raise DataError(
            f"{MODALITIES_OPTION} {spec!r} has an empty item (two commas, or one at an end): give one item per "
            f"site, {EXAMPLE}"
        )
    parsed = []
    for item in items:
        mods = tuple(m.strip().lower() for m in item.split("+"))
        unknown = [m for m in mods if m not in MODALITIES]
        if unknown or not all(mods):
            raise DataError(
                f"{MODALITIES_OPTION}: {item!r} is not a modality or modalities joined by '+' (known: "
                f"{', '.join(MODALITIES)}), {EXAMPLE}"
            )
        missing = [m for m in mods if m not in known]
        if missing:
            raise DataError(
                f"{MODALITIES_OPTION}: {item!r} names {', '.join(missing)}, which this data does not have (it has "
                f"{', '.join(known)})"
            )
        if len(set(mods)) != len(mods):
            raise DataError(f"{MODALITIES_OPTION}: {item!r} names a modality twice")
        parsed.append(mods)
    if num_sites is None:
        return parsed
    if len(parsed) > num_sites:
        raise DataError(
            f"{MODALITIES_OPTION} {','.join('+'.join(m) for m in parsed)} has {len(parsed)} items for "
            f"{num_sites} site{'s' if num_sites != 1 else ''}: give at most one item per site (or more sites)"
        )
    return [parsed[i % len(parsed)] for i in range(num_sites)]


def modalities_text(spec: str | Sequence[str]) -> str:
    """The list as checked, normalised ("S2, s1+S2" -> "s2,s1+s2"): what an argparse `type` returns, so a bad
    list stops at the option that gave it; DataError as `parse_site_modalities`."""
    return ",".join("+".join(mods) for mods in parse_site_modalities(spec))

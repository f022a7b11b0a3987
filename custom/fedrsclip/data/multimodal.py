"""Multi-modal manifests: each site holds one modality of the scenes it gets, or several, paired by scene.

A paired listing (`bigearthnet-mm`, or the synthetic `make_synthetic_mm` data) has one record per scene (its
Sentinel-2 patch) and each scene's partner patches by modality. `build_mm_manifest` splits and partitions the
scenes exactly as `build_manifest` does (the same seeded split and schemes, stratified by a scene's first label),
then gives each site the patches of its modalities:

    "modality": "multi", "modalities": ["s2", "s1"], "multi_modal": true,
    "sites": {"site-1": {"modality": "s2", "train": [["S2/<patch>", [labels]], ...], "test": [...]},
              "site-2": {"modality": "s1", "train": [["S1/<patch>", [labels]], ...], "test": [...]},
              "site-3": {"modality": "s2", "train": [...], "test": [...],
                         "paired": {"s1": {"train": ["S1/<patch>", ...], "test": [...]}}}}

A site's records are patches of its own `modality` (so `site_split` reads them unchanged); `paired` lists, for a
site holding several modalities, the partner patch of each record, index by index (the same scene and labels).
The top-level "modality" "multi" names no composite: a reader that ignores per-site modalities stops at
`image_settings` instead of rendering SAR bands as Sentinel-2.

Which modalities a site holds is a per-site list, written as "s2", "s1" or "s2+s1" (several, paired); a list
shorter than the number of sites is repeated (`--modalities s2,s1` alternates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DataError
from .manifest import SPLITS, build_manifest, confine
from .modalities import parse_site_modalities
from .readers import DatasetListing

MULTI = "multi"  # the top-level "modality" of a multi-modal manifest: every site declares its own


def build_mm_manifest(
    listing: DatasetListing,
    num_clients: int,
    site_modalities: str | Sequence[str],
    scheme: str,
    seed: int,
    train_fraction: float | None = None,
    **scheme_kwargs: Any,
) -> dict[str, Any]:
    """The multi-modal manifest (module docstring) of a paired listing; scenes split and partitioned as
    `build_manifest` does. DataError for a listing without partners or a bad modality spec."""
    if listing.partners is None:
        raise DataError(
            f"dataset {listing.name} has no paired modalities; multi-modal manifests need a paired "
            "dataset such as bigearthnet-mm (or the synthetic one from `fedrsclip data synth-mm`)"
        )
    available = [listing.modality, *sorted({m for p in listing.partners.values() for m in p})]
    per_site = parse_site_modalities(site_modalities, num_clients, available)
    manifest = build_manifest(listing, num_clients, scheme, seed, train_fraction, **scheme_kwargs)

    def path_of(scene: str, modality: str) -> str:
        return scene if modality == listing.modality else listing.partners[scene][modality]

    sites = {}
    for (name, parts), mods in zip(manifest["sites"].items(), per_site):
        site: dict[str, Any] = {"modality": mods[0]}
        for split in SPLITS:
            site[split] = [[path_of(scene, mods[0]), labels] for scene, labels in parts[split]]
        if len(mods) > 1:
            site["paired"] = {
                m: {split: [path_of(scene, m) for scene, _ in parts[split]] for split in SPLITS} for m in mods[1:]
            }
        sites[name] = site
    held = sorted({m for mods in per_site for m in mods}, key=available.index)
    manifest.update(modality=MULTI, modalities=held, multi_modal=True, sites=sites)
    return manifest


def is_multi_modal(manifest: Mapping[str, Any]) -> bool:
    """True for a manifest whose sites declare their own modalities."""
    return bool(manifest.get("multi_modal", False))


def site_modalities(manifest: Mapping[str, Any], site: str) -> tuple[str, ...]:
    """The modalities a site holds, its records' modality first; for a single-modality manifest, the manifest's."""
    if site not in manifest["sites"]:
        raise DataError(f"site '{site}' is not in the manifest ({', '.join(manifest['sites'])})")
    parts = manifest["sites"][site]
    if not is_multi_modal(manifest):
        return (manifest.get("modality", "rgb"),)
    return (parts["modality"], *parts.get("paired", {}))


def paired_split(
    manifest: Mapping[str, Any], site: str, split: str, modality: str, root: str | Path | None = None
) -> list[tuple[Path, Path]]:
    """(record path, partner path of `modality`) of each scene in a site's split, both confined to the data root.

    DataError when the site holds no paired `modality` or a path leaves the data root.
    """
    parts = manifest["sites"].get(site)
    if parts is None:
        raise DataError(f"site '{site}' is not in the manifest ({', '.join(manifest['sites'])})")
    partners = parts.get("paired", {}).get(modality)
    if partners is None:
        raise DataError(
            f"site '{site}' holds no {modality} patches paired with its {parts.get('modality')} records "
            f"(its modalities: {'+'.join(site_modalities(manifest, site))})"
        )
    base = root if root is not None else manifest["root"]
    return [
        (
            confine(base, rel, f"manifest entry {i} of {site}/{split}"),
            confine(base, partner, f"paired {modality} entry {i} of {site}/{split}"),
        )
        for i, ((rel, _), partner) in enumerate(zip(parts[split], partners[split]))
    ]

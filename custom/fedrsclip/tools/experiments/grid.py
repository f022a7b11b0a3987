"""The grid of an experiment: its cells (algorithm x site count x partition scheme x seed, and in a multi-modal
federation x the ablation variants of its three modules) and where each cell's data comes from.

The "centralized" column runs each algorithm as the same FLARE job with ONE site that holds all the data pooled
(every site's train and test split; `fedrsclip.data.manifest.centralized`). The partition scheme does not apply to
it, so there is one centralized cell per algorithm and seed, shared by every partition's table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...algorithms import get_algorithm
from ...data.manifest import build_manifest, centralized, load_manifest, write_manifest
from ...data.modalities import SYNTHETIC_MODALITIES, parse_site_modalities
from ...data.readers import list_dataset
from .layout import CENTRALIZED, POOLED

DEFAULT_SITES = "centralized,2,5,10,15,20,40"
MAX_THREADS = 10  # simulator threads: one process per site up to this; more sites share them (fresh process per task)
GRID_KEYS = ("algorithm", "train.seed", "data.synthetic_sites", "data.synthetic_scheme", "data.source", "data.manifest")
# Multi-modal ablations (--ablate): the full framework (the settings' modules) and one cell per module switched off.
MODULES = {"mf": "multimodal.fusion", "fw": "multimodal.whitening", "mim": "multimodal.mim"}
FULL = "full"


def variant_overrides(variant: str) -> list[str]:
    """The settings of an ablation variant: [] for "" and "full", ["multimodal.fusion=false"] for "no-mf", ..."""
    if variant in ("", FULL):
        return []
    return [f"{MODULES[variant.removeprefix('no-')]}=false"]


def parse_ablate(text: str | None) -> list[str]:
    """ "mf,fw" -> ["full", "no-mf", "no-fw"]; None or "" -> [""] (no ablation axis). ValueError names a bad one."""
    if not text:
        return [""]
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in MODULES]
    if bad or not parts:
        raise ValueError(
            f"--ablate: {bad[0] if bad else text!r} is not a multi-modal module; give a comma-separated "
            f"list of {', '.join(MODULES)} (each is switched off in its own cells)"
        )
    return [FULL, *(f"no-{p}" for p in dict.fromkeys(parts))]


@dataclass(frozen=True)
class Cell:
    algorithm: str
    sites: int | None  # None: centralized (one site, all data pooled)
    partition: str
    seed: int
    variant: str = ""  # "" (no ablation axis), "full", or "no-<module>" (variant_overrides)

    @property
    def column(self) -> str:
        return CENTRALIZED if self.sites is None else str(self.sites)

    @property
    def num_sites(self) -> int:
        return 1 if self.sites is None else self.sites

    @property
    def name(self) -> str:
        name = f"{self.algorithm}__{self.column}__{self.partition}__seed{self.seed}"
        return f"{name}__{self.variant}" if self.variant else name

    def describe(self) -> str:
        where = "centralized (1 site, all data)" if self.sites is None else f"{self.sites} sites, {self.partition}"
        return f"{self.algorithm}{f' ({self.variant})' if self.variant else ''}, {where}, seed {self.seed}"


def parse_sites(text: str) -> list[int | None]:
    """ "centralized,2,5" -> [None, 2, 5]."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == CENTRALIZED:
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--sites: {part!r} is neither 'centralized' nor a positive number of sites")
    if not out:
        raise ValueError("--sites is empty; give e.g. centralized,2,5")
    return list(dict.fromkeys(out))


def build_grid(
    algorithms: Sequence[str],
    sites: Sequence[int | None],
    partitions: Sequence[str],
    seeds: Sequence[int],
    variants: Sequence[str] = ("",),
) -> list[Cell]:
    """Every cell; `variants` (`parse_ablate`) multiplies each one."""
    for name in algorithms:
        get_algorithm(name)  # unknown names stop here, with the list of valid ones
    cells = []
    for algorithm in algorithms:
        for seed in seeds:
            for variant in variants:
                if None in sites:
                    cells.append(Cell(algorithm, None, POOLED, seed, variant))
                cells += [Cell(algorithm, n, p, seed, variant) for p in partitions for n in sites if n is not None]
    return cells


@dataclass
class DataSource:
    """Where each cell's data comes from: the offline synthetic scenes (default), manifests named by a pattern
    (`{sites}`, `{partition}` filled in), or a dataset folder partitioned here for each site count."""

    manifest: str | None = None
    dataset: str | None = None
    root: str | None = None
    data_seed: int = 0
    modalities: str | None = None  # a multi-modal federation (multimodal.modalities): synthetic S2/S1 scenes
    description: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.manifest and self.dataset:
            raise ValueError("give either --manifest or --dataset/--root, not both")
        if bool(self.dataset) != bool(self.root):
            raise ValueError("--dataset and --root go together (the dataset layout and its folder)")
        self.description = (
            f"manifests {self.manifest}"
            if self.manifest
            else f"{self.dataset} at {self.root}"
            if self.dataset
            else "synthetic (data.source: synthetic-mm)"
            if self.modalities
            else "synthetic (data.source: synthetic)"
        )
        self._listing = None

    def check(self, sites: Sequence[int | None], partitions: Sequence[str]) -> None:
        if self.modalities and None in sites:
            raise ValueError(
                "--sites: a multi-modal grid (--modalities) has no centralized column (one site cannot "
                "stand for sites of different modalities); give site counts only, e.g. --sites 3,6"
            )
        if self.modalities:  # the one parser, against the grid's fewest sites and what its data can hold
            fewest = min(n for n in sites if n is not None)
            synthetic = None if self.manifest or self.dataset else SYNTHETIC_MODALITIES
            try:
                parse_site_modalities(self.modalities, fewest, synthetic)
            except ValueError as exc:
                where = " (synthetic S2/S1 scenes)" if synthetic else ""
                raise ValueError(f"{exc}{where}; the grid's fewest sites: --sites {fewest}") from None
        if self.manifest and "{sites}" not in self.manifest and len([n for n in sites if n is not None]) > 1:
            raise ValueError(
                f"--manifest {self.manifest}: the grid has several site counts, so the pattern needs "
                "'{sites}' (e.g. ucm{sites}.json, made with fedrsclip data partition --sites N)"
            )
        if self.manifest and "{partition}" not in self.manifest and len(partitions) > 1:
            raise ValueError(
                f"--manifest {self.manifest}: the grid has several partition schemes, so the pattern "
                "needs '{partition}'"
            )

    def overrides(self, cell: Cell, grid_sites: Sequence[int | None], out: Path) -> list[str]:
        if not self.manifest and not self.dataset:
            scheme = "uniform" if cell.sites is None else cell.partition  # one site holds everything either way
            source = (
                ["data.source=synthetic-mm", "data.synthetic_size=48"] if self.modalities else ["data.source=synthetic"]
            )  # 48 px: a multiple of 6, as the synthetic 60 m bands need
            return [*source, f"data.synthetic_scheme={scheme}", f"data.synthetic_dir={out / 'data'}"]
        return ["data.source=manifest", f"data.manifest={self._manifest_for(cell, grid_sites, out)}"]

    def _manifest_for(self, cell: Cell, grid_sites: Sequence[int | None], out: Path) -> Path:
        if self.dataset:
            path = out / "data" / f"{self.dataset}-{cell.partition}-{cell.num_sites}.json"
            if not path.is_file():
                if self._listing is None:
                    self._listing = list_dataset(self.dataset, self.root, progress=False)
                scheme = "uniform" if cell.sites is None else cell.partition
                write_manifest(build_manifest(self._listing, cell.num_sites, scheme, self.data_seed), path)
            return path
        federated = sorted(n for n in grid_sites if n is not None)
        source = Path(
            self.manifest.format(
                sites=cell.sites or (federated[0] if federated else 1),
                partition=cell.partition if cell.sites else "uniform",
            )
        ).expanduser()
        if not source.is_file():
            raise FileNotFoundError(
                f"--manifest: {source} does not exist (for {cell.describe()}); make it with "
                f"fedrsclip data partition ... --out {source}"
            )
        manifest = load_manifest(source)
        if cell.sites is None:  # all sites' data pooled at one site
            path = out / "data" / f"centralized-{source.stem}.json"
            if not path.is_file():
                write_manifest(centralized(manifest), path)
            return path
        if len(manifest["sites"]) != cell.sites:
            raise ValueError(
                f"--manifest: {source} partitions the data over {len(manifest['sites'])} sites, the "
                f"cell needs {cell.sites}"
            )
        return source.resolve()


def check_overrides(overrides: Sequence[str], variants: Sequence[str] = ("",)) -> None:
    ablated = {MODULES[v.removeprefix("no-")] for v in variants if v.startswith("no-")}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in GRID_KEYS or key == "multimodal.modalities":
            raise ValueError(
                f"--set {item}: {key} is set per cell by the grid (--algorithms, --seeds, --sites, "
                "--partition, --manifest/--dataset, --modalities); leave it out"
            )
        if key in ablated:
            raise ValueError(f"--set {item}: {key} is switched per cell by --ablate; leave it out")

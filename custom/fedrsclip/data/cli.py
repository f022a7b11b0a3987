"""`fedrsclip data ...` commands: build manifests, make the synthetic dataset, show a manifest, list the class
names a dataset gets, and preview what the image encoder sees.

The main CLI calls add_data_commands(subparsers) and, for a parsed `data`
command, run_data_command(args). `python -m fedrsclip.data.cli data ...` runs
the same commands on their own.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .classnames import class_name_problems, name_token_limit, token_count
from .composite import DynamicRangeWarning, describe, modality_table, settings_from_config
from .errors import DataError
from .manifest import build_manifest, load_manifest, site_counts_table, write_manifest
from .modalities import modalities_text
from .multimodal import MULTI, build_mm_manifest
from .partition import SCHEMES
from .readers import DATASETS, dataset_modality, list_dataset
from .split import DEFAULT_TRAIN_FRACTION
from .synth import MAX_CLASSES, make_synthetic
from .synth_mm import make_synthetic_mm


def checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse `type` that converts, checks, and names what it expected when either fails."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def modalities_option(text: str) -> str:
    """An argparse `type` for every --modalities: the list checked by its one parser
    (`multimodal.parse_site_modalities`), normalised; the parser's message when it is refused."""
    try:
        return modalities_text(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = checked(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")
_positive_float = checked(float, lambda v: v > 0, "a positive number")


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data` with its sub-commands partition, synth, synth-mm, show, classes and preview.

    The parsed namespace gets func=run_data_command.
    """
    data = subparsers.add_parser(
        "data",
        help="prepare datasets: federated partitions (manifests) and a synthetic dataset",
        description="Prepare Fed-RSIC data: list a dataset, split it and partition it over sites.",
    )
    data.set_defaults(func=run_data_command)
    sub = data.add_subparsers(dest="data_command", metavar="{partition,synth,synth-mm,show,classes,preview}")
    sub.required = True

    fractions = ", ".join(f"{k} {v}" for k, v in DEFAULT_TRAIN_FRACTION.items())
    p = sub.add_parser(
        "partition",
        help="split a dataset into train/test and partition it over sites; write a manifest",
        description="List a dataset, make a seeded stratified train/test split, partition it over "
        "N sites and write the manifest JSON.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset folder (for ucmerced: UCMerced_LandUse)")
    p.add_argument("--sites", type=positive_int, help="number of sites (1 = centralised); required")
    # the spelling before FLARE's vocabulary was adopted: accepted for one release, with a warning
    p.add_argument("--clients", type=positive_int, dest="clients", help=argparse.SUPPRESS)
    p.add_argument(
        "--scheme", default="uniform", choices=SCHEMES, help="partition scheme (default: uniform, the paper's)"
    )
    p.add_argument("--seed", default=0, type=non_negative_int, help="random seed for split and partition (default: 0)")
    p.add_argument(
        "--train-fraction",
        type=_fraction,
        default=None,
        help=f"fraction of each class used for training (defaults: {fractions})",
    )
    p.add_argument(
        "--classes-per-site",
        type=positive_int,
        default=None,
        help="label-skew only: classes each site holds (default: half the classes, rounded up)",
    )
    p.add_argument(
        "--beta",
        type=_positive_float,
        default=None,
        help="dirichlet only: concentration, smaller = more skew (default: 0.5)",
    )
    p.add_argument(
        "--class-names", default=None, metavar="FILE", help="JSON/YAML mapping of folder name to readable class name"
    )
    p.add_argument(
        "--modalities",
        default=None,
        type=modalities_option,
        metavar="SPEC",
        help="bigearthnet-mm only: each site's modalities, e.g. s2,s1 (alternating) or s2,s1,s2+s1 "
        "(a site with both holds them paired by scene); repeated over the sites",
    )
    p.add_argument(
        "--per-class",
        type=positive_int,
        default=None,
        metavar="N",
        help="a quick look: at most N images of each class, drawn with --seed before anything is decoded",
    )
    p.add_argument(
        "--fraction",
        type=checked(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
        default=None,
        help="a quick look: this fraction of each class's images (at least one), drawn with --seed",
    )
    p.add_argument(
        "--out",
        required=True,
        help="manifest file to write (new, or an earlier fedrsclip manifest, "
        "which is replaced; any other file is refused)",
    )
    p.add_argument("--no-verify", action="store_true", help="do not open every image to check it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help="image settings the check uses (data.max_pixels, data.composite, ...; repeatable)",
    )

    s = sub.add_parser(
        "synth",
        help="write a small synthetic remote-sensing scene dataset (offline demos and tests)",
        description="Write a deterministic ImageFolder of synthetic remote-sensing-like scenes.",
    )
    s.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synthetic dataset)")
    s.add_argument(
        "--classes", type=positive_int, default=10, help=f"number of classes, 2..{MAX_CLASSES} (default: 10)"
    )
    s.add_argument("--per-class", type=positive_int, default=40, help="images per class (default: 40)")
    s.add_argument("--size", type=positive_int, default=64, help="image side in pixels (default: 64)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    mm = sub.add_parser(
        "synth-mm",
        help="write synthetic paired Sentinel-2/Sentinel-1 multi-label scenes in BigEarthNet's layout",
        description="Write a deterministic synthetic multi-modal, multi-label dataset (12-band S2-like and 2-band "
        "S1-like GeoTIFF patches of the same scenes); partition it with --dataset bigearthnet-mm.",
    )
    mm.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synth-mm dataset)")
    mm.add_argument("--scenes", type=positive_int, default=120, help="number of scenes (default: 120)")
    mm.add_argument(
        "--size",
        type=positive_int,
        default=60,
        help="patch side in pixels at 10 m, a multiple of 6 (default: 60; BigEarthNet's is 120)",
    )
    mm.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default: 0)")
    mm.add_argument("--quiet", action="store_true", help="no progress bar")

    show = sub.add_parser("show", help="print the per-site table of a manifest")
    show.add_argument("manifest", help="manifest file")

    c = sub.add_parser(
        "classes",
        help="print each class folder, the class name derived from it and its token count",
        description="List the class names a dataset gets (the rule is in README 'Datasets'), their length in CLIP "
        "tokens and the limit; exit 2 when two folders share a name or a name is too long.",
    )
    c.add_argument("--dataset", required=True, choices=DATASETS, help="dataset layout")
    c.add_argument("--root", required=True, help="dataset folder")
    c.add_argument(
        "--class-names", default=None, metavar="FILE", help="JSON/YAML mapping of folder name to readable class name"
    )

    v = sub.add_parser(
        "preview",
        help="write the 3-channel image the encoder sees for files or patch folders",
        description="Render files or band-per-file patch folders exactly as feature extraction does (composite "
        "and scaling from the data.* settings) and write them side by side into one PNG.",
        epilog="modalities and composites:\n  " + "\n  ".join(modality_table()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("inputs", nargs="+", metavar="FILE_OR_PATCH", help="image files or patch folders")
    v.add_argument("--out", required=True, help="PNG to write (refused if it exists, unless --force)")
    v.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="data.KEY=VALUE",
        help="image settings: data.modality, data.composite, data.scaling, data.scale_range, ...",
    )
    v.add_argument("--config", default=None, help="a configuration YAML whose data.* settings to use")
    v.add_argument("--manifest", default=None, help="take data.modality: auto from this manifest")
    v.add_argument("--force", action="store_true", help="replace --out if it exists")
    return data


def _data_config(overrides: Sequence[str], config: str | None = None):
    """The DataConfig of a configuration file and `data.*` overrides (the one schema, validated)."""
    from ..config import ConfigError, load_config

    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise DataError(f"--set takes data.* settings here; got {bad[0]!r}")
    try:
        return load_config(config, list(overrides)).data
    except ConfigError as exc:
        raise DataError(str(exc)) from exc


def _check_manifest_out(out: Path) -> None:
    """--out may name a new file or a fedrsclip manifest (one this command wrote: replacing it is the ordinary
    re-partitioning, and the old one is remade by its own command). Anything else is refused, with no --force: a
    file that is not a manifest at that path is a mistaken --out, and only the user may delete it."""
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the manifest's file name, e.g. {out / 'manifest.json'}")
    if out.exists():
        try:
            load_manifest(out)
        except DataError:
            raise DataError(
                f"--out {out} exists and is not a fedrsclip manifest: choose another file (nothing was "
                "written, and that file is left as it is)"
            ) from None


def _partition(args: argparse.Namespace) -> int:
    if args.clients is not None:
        if args.sites is not None and args.sites != args.clients:
            raise DataError(f"--sites {args.sites} and --clients {args.clients} disagree; give --sites only")
        warnings.warn(
            "--clients is now --sites (FLARE's word); --clients will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        args.sites = args.clients
    if args.sites is None:
        raise DataError("give the number of sites: --sites N")
    _check_manifest_out(Path(args.out))  # before listing the dataset, which can take minutes
    if args.classes_per_site is not None and args.scheme != "label-skew":
        raise DataError("--classes-per-site applies only to --scheme label-skew")
    if args.beta is not None and args.scheme != "dirichlet":
        raise DataError("--beta applies only to --scheme dirichlet")
    options = {}
    if args.classes_per_site is not None:
        options["classes_per_site"] = args.classes_per_site
    if args.beta is not None:
        options["dirichlet_beta"] = args.beta
    paired = args.dataset == "bigearthnet-mm"
    if args.modalities is not None and not paired:
        raise DataError("--modalities applies only to --dataset bigearthnet-mm (paired Sentinel-1/Sentinel-2 scenes)")
    if paired and args.modalities is None:
        raise DataError(
            "--dataset bigearthnet-mm needs --modalities: each site's modalities, e.g. s2,s1 or s2,s1,s2+s1"
        )
    image = settings_from_config(_data_config(args.set), dataset_modality(args.dataset))
    listing = list_dataset(
        args.dataset,
        args.root,
        class_names_file=args.class_names,
        verify=not args.no_verify,
        progress=not args.quiet,
        image=image,
        per_class=args.per_class,
        fraction=args.fraction,
        subset_seed=args.seed,
    )
    if paired:
        manifest = build_mm_manifest(
            listing, args.sites, args.modalities, args.scheme, args.seed, args.train_fraction, **options
        )
    else:
        manifest = build_manifest(listing, args.sites, args.scheme, args.seed, args.train_fraction, **options)
    if args.per_class is not None or args.fraction is not None:  # a subset: say so wherever the manifest goes
        manifest["subset"] = {"per_class": args.per_class, "fraction": args.fraction, "seed": args.seed}
    path = write_manifest(manifest, args.out)
    print(site_counts_table(manifest))
    if manifest.get("subset"):
        print(
            "a subset for a quick look: "
            + ", ".join(
                text
                for text in (
                    f"at most {args.per_class} images per class" if args.per_class else "",
                    f"{args.fraction:g} of each class" if args.fraction else "",
                )
                if text
            )
            + f" (seed {args.seed}); leave out --per-class/--fraction for the whole dataset"
        )
    if manifest["skipped"]:
        print(f"{len(manifest['skipped'])} files were skipped; see 'skipped' in the manifest")
    print(f"wrote {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    out = make_synthetic(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        size=args.size,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {args.classes} classes x {args.per_class} images of {args.size}x{args.size} to {out}")
    print(f"next: fedrsclip data partition --dataset synthetic --root {out} --sites 3 --out manifest.json")
    return 0


def _synth_mm(args: argparse.Namespace) -> int:
    out = make_synthetic_mm(args.out, scenes=args.scenes, size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.scenes} synthetic S2/S1 scene pairs of {args.size}x{args.size} px to {out}")
    print(
        f"next: fedrsclip data partition --dataset bigearthnet-mm --root {out} --sites 2 --modalities s2,s1 "
        "--out manifest.json"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    print(site_counts_table(load_manifest(args.manifest)))
    return 0


def _classes(args: argparse.Namespace) -> int:
    listing = list_dataset(
        args.dataset, args.root, class_names_file=args.class_names, verify=False, progress=False, check_names=False
    )
    folders = listing.class_folders or ["(nomenclature)"] * len(listing.classes)
    limit = name_token_limit()
    rows = [(f, c, str(token_count(c))) for f, c in zip(folders, listing.classes)]
    widths = [max(len(r[i]) for r in [("folder", "class name", "tokens"), *rows]) for i in range(3)]
    print(f"{'folder'.ljust(widths[0])}  {'class name'.ljust(widths[1])}  tokens")
    for folder, name, tokens in rows:
        print(f"{folder.ljust(widths[0])}  {name.ljust(widths[1])}  {tokens.rjust(6)}")
    print(f"{len(rows)} classes; a name may have at most {limit} tokens (the text encoder's 77 minus the prompt)")
    problems = class_name_problems(listing.class_folders or listing.classes, listing.classes, limit)
    if problems:
        raise DataError("; ".join(problems))
    return 0


def _preview(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..atomic import atomic_write
    from .images import detect_modality, load_rgb

    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise DataError(f"--out {out}: write the preview as a .png file")
    if out.exists() and not args.force:
        raise DataError(f"--out {out} exists; choose another name, or pass --force to replace it")
    data = _data_config(args.set, args.config)
    manifest_modality = load_manifest(args.manifest).get("modality", "rgb") if args.manifest else None
    if manifest_modality == MULTI:  # sites of several modalities: each patch folder tells its own
        manifest_modality = None
    tiles = []
    for item in args.inputs:
        settings = settings_from_config(data, manifest_modality or detect_modality(item))
        with warnings.catch_warnings():
            warnings.simplefilter("always", DynamicRangeWarning)
            image = load_rgb(item, settings)  # the function feature extraction calls
        array = np.asarray(image)
        print(f"{item}: {image.width} x {image.height}, {describe(settings)}, mean {array.mean():.1f} of 255")
        tiles.append(array)
    gap = 4
    height = max(t.shape[0] for t in tiles)
    strip = np.zeros((height, sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1), 3), dtype=np.uint8)
    x = 0
    for tile in tiles:
        strip[: tile.shape[0], x : x + tile.shape[1]] = tile
        x += tile.shape[1] + gap
    atomic_write(out, lambda handle: Image.fromarray(strip, "RGB").save(handle, format="PNG", optimize=True))
    print(
        f"wrote {out} ({len(tiles)} image{'s' if len(tiles) > 1 else ''}, as the encoder sees them before its "
        "own resize and crop)"
    )
    return 0


_COMMANDS = {
    "partition": _partition,
    "synth": _synth,
    "synth-mm": _synth_mm,
    "show": _show,
    "classes": _classes,
    "preview": _preview,
}


def run_data_command(args: argparse.Namespace) -> int:
    """Run a parsed `data` sub-command; returns the exit status (2 on a DataError)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status = _COMMANDS[args.data_command](args)
        except DataError as exc:
            status = 2
            error = str(exc)
        else:
            error = None
    # Print warnings as plain lines rather than Python's file:line format.
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if error:
        print(f"error: {error}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: `python -m fedrsclip.data.cli data partition ...`."""
    parser = argparse.ArgumentParser(prog="fedrsclip", description="FedRSCLIP data tools")
    sub = parser.add_subparsers(dest="command", metavar="{data}")
    sub.required = True
    add_data_commands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""`fedrsclip data ...` commands: build manifests, make the synthetic dataset, show a manifest.

The main CLI calls add_data_commands(subparsers) and, for a parsed `data`
command, run_data_command(args). `python -m fedrsclip.data.cli data ...` runs
the same commands on their own.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .errors import DataError
from .manifest import build_manifest, load_manifest, site_counts_table, write_manifest
from .partition import SCHEMES
from .readers import DATASETS, list_dataset
from .split import DEFAULT_TRAIN_FRACTION
from .synth import MAX_CLASSES, make_synthetic


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
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


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_fraction = _checked(float, lambda v: 0.0 < v < 1.0, "a number strictly between 0 and 1")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `data` with its sub-commands partition, synth and show.

    The parsed namespace gets func=run_data_command.
    """
    data = subparsers.add_parser(
        "data",
        help="prepare datasets: federated partitions (manifests) and a synthetic dataset",
        description="Prepare Fed-RSIC data: list a dataset, split it and partition it over sites.",
    )
    data.set_defaults(func=run_data_command)
    sub = data.add_subparsers(dest="data_command", metavar="{partition,synth,show}")
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
    p.add_argument("--clients", required=True, type=_positive_int, help="number of sites (1 = centralised)")
    p.add_argument("--scheme", default="uniform", choices=SCHEMES, help="partition scheme (default: uniform, the paper's)")
    p.add_argument("--seed", default=0, type=_non_negative_int, help="random seed for split and partition (default: 0)")
    p.add_argument("--train-fraction", type=_fraction, default=None,
                   help=f"fraction of each class used for training (defaults: {fractions})")
    p.add_argument("--classes-per-site", type=_positive_int, default=None,
                   help="label-skew only: classes each site holds (default: half the classes, rounded up)")
    p.add_argument("--beta", type=_positive_float, default=None,
                   help="dirichlet only: concentration, smaller = more skew (default: 0.5)")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="JSON/YAML mapping of folder name to readable class name")
    p.add_argument("--out", required=True, help="manifest file to write")
    p.add_argument("--no-verify", action="store_true", help="do not open every image to check it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser(
        "synth",
        help="write a small synthetic remote-sensing scene dataset (offline demos and tests)",
        description="Write a deterministic ImageFolder of synthetic remote-sensing-like scenes.",
    )
    s.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synthetic dataset)")
    s.add_argument("--classes", type=_positive_int, default=10, help=f"number of classes, 2..{MAX_CLASSES} (default: 10)")
    s.add_argument("--per-class", type=_positive_int, default=40, help="images per class (default: 40)")
    s.add_argument("--size", type=_positive_int, default=64, help="image side in pixels (default: 64)")
    s.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    show = sub.add_parser("show", help="print the per-site table of a manifest")
    show.add_argument("manifest", help="manifest file")
    return data


def _partition(args: argparse.Namespace) -> int:
    if args.classes_per_site is not None and args.scheme != "label-skew":
        raise DataError("--classes-per-site applies only to --scheme label-skew")
    if args.beta is not None and args.scheme != "dirichlet":
        raise DataError("--beta applies only to --scheme dirichlet")
    options = {}
    if args.classes_per_site is not None:
        options["classes_per_site"] = args.classes_per_site
    if args.beta is not None:
        options["dirichlet_beta"] = args.beta
    listing = list_dataset(
        args.dataset, args.root, class_names_file=args.class_names,
        verify=not args.no_verify, progress=not args.quiet,
    )
    manifest = build_manifest(listing, args.clients, args.scheme, args.seed, args.train_fraction, **options)
    path = write_manifest(manifest, args.out)
    print(site_counts_table(manifest))
    if manifest["skipped"]:
        print(f"{len(manifest['skipped'])} files were skipped; see 'skipped' in the manifest")
    print(f"wrote {path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    out = make_synthetic(args.out, classes=args.classes, per_class=args.per_class,
                         size=args.size, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.classes} classes x {args.per_class} images of {args.size}x{args.size} to {out}")
    print(f"next: fedrsclip data partition --dataset synthetic --root {out} --clients N --out manifest.json")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(site_counts_table(load_manifest(args.manifest)))
    return 0


_COMMANDS = {"partition": _partition, "synth": _synth, "show": _show}


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

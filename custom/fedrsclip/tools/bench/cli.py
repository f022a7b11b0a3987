"""`fedrsclip bench` and `fedrsclip bench --scaling`: the options, and the table then one JSON line on stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...atomic import to_json
from ...data.cli import positive_int
from .common import DEFAULT_IMAGES, is_bench_output, quiet_open_clip


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="measure step speed-up, feature throughput, upload sizes, memory and "
        "FLARE overhead (last stdout line: one JSON object)",
    )
    p.add_argument("--quick", action="store_true", help="reduced run, under two minutes on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--json-out", metavar="FILE", help="also write the figures to this JSON file")
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads (default: torch's own)")
    p.add_argument(
        "--images",
        default=str(DEFAULT_IMAGES),
        metavar="DIR",
        help="UC Merced images to time on (default: %(default)s; synthetic scenes where it is absent)",
    )
    p.add_argument(
        "--flare",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the FLARE simulator jobs (--no-flare: skip them); when neither is given: run them in the full "
        "bench, skip them with --quick",
    )
    p.add_argument(
        "--flare-arch",
        metavar="MODEL",
        help="open_clip model the FLARE job's sites load, with random weights (default: the job's own; ViT-B-16 at "
        "10 sites, one process each, measured about 7 GB of memory: PSS, 12 GB RSS summed)",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help="instead: round time vs classes, images per site and sites "
        "(about 10 minutes on 2 CPU cores; with --quick a smoke run); writes scaling.json and scaling.png",
    )
    p.add_argument(
        "--out-dir",
        help="where --scaling (default: workspaces/scaling) or --paper-scale N (default: "
        "workspaces/paper-scale-N) writes",
    )
    paper = p.add_argument_group("--paper-scale: the paper's UC Merced federation with ViT-B/16 in the simulator")
    paper.add_argument(
        "--paper-scale",
        type=positive_int,
        metavar="SITES",
        help="instead: Table I's UC Merced partition over "
        "SITES sites (Table I has 10 and 40), ViT-B/16 with random weights from a local file, in `nvflare "
        "simulator`; wall time per round, memory and FLARE's share (README: Performance)",
    )
    paper.add_argument(
        "--sim-threads",
        type=positive_int,
        metavar="T",
        help="simulator threads, at most the sites (default: 10 at 10 and 40 sites, else one per site)",
    )
    paper.add_argument("--rounds", type=positive_int, default=3, help="rounds (default: %(default)s)")
    paper.add_argument("--gpu", metavar="LIST", help="the simulator's -gpu, e.g. 0 or 0,1")
    paper.add_argument(
        "--cold",
        action="store_true",
        help="start the sites with empty feature caches (round 1 then "
        "loads the whole CLIP and extracts at every site at once)",
    )
    paper.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="another job setting, e.g. model.text_precision=bf16 (repeatable)",
    )
    p.set_defaults(func=bench_command)
    return p


def bench_command(args: argparse.Namespace) -> int:
    """Run what the options ask for (the plain bench, --scaling or --paper-scale) and print it."""
    with quiet_open_clip():
        return _bench_command(args)


def _bench_command(args: argparse.Namespace) -> int:
    if args.paper_scale is not None:
        from .paper import paper_scale_command

        return paper_scale_command(
            args.paper_scale,
            args.out_dir,
            args.sim_threads,
            args.rounds,
            args.images,
            args.cold,
            args.gpu,
            args.overrides,
        )
    if args.scaling:
        from .scaling import scaling_command

        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        return scaling_command(args.out_dir or "workspaces/scaling", args.device, quick=args.quick)
    from .run import run_bench  # torch, open_clip: only when the bench runs

    if args.json_out and Path(args.json_out).exists() and not is_bench_output(Path(args.json_out)):
        print(
            f"error: --json-out {args.json_out} exists and is not an earlier bench output: choose another file",
            file=sys.stderr,
        )
        return 2
    from .table import format_table

    results = run_bench(
        quick=args.quick,
        device=args.device,
        out=args.json_out,
        threads=args.threads,
        flare=args.flare,
        flare_arch=args.flare_arch,
        images=args.images,
    )
    print(format_table(results), flush=True)
    print(to_json(results, indent=None), flush=True)
    return 0

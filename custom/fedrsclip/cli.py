"""`fedrsclip <command>`: data preparation, in-process runs, the FLARE demo and reports."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .algorithms import ALGORITHMS


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _algorithms(_args: argparse.Namespace) -> int:
    for algo in ALGORITHMS.values():
        sends = ", ".join(algo.sends) if algo.sends else "nothing"
        print(f"{algo.name:24s} sends: {sends:12s} {algo.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """An in-process federation (no FLARE): every site in this process."""
    from .config import load_config
    from .data.manifest import load_manifest
    from .federation import run_federation
    from .io import atomic_write_json

    overrides = list(args.set or [])
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    cfg = load_config(args.config, overrides)
    if not cfg.data.manifest:
        print("error: give --manifest (or data.manifest in the configuration)", file=sys.stderr)
        return 2
    history = run_federation(cfg, load_manifest(cfg.data.manifest), state_dir=args.state_dir)
    history["config"] = cfg.to_dict()
    atomic_write_json(args.out, history)
    for record in history["rounds"]:
        print(f"round {record['round']:3d}  mean accuracy {record['mean_accuracy']:6.2f}  "
              f"weighted {record['weighted_accuracy']:6.2f}")
    print(f"zero-shot ('{history['zero_shot']['prompt']}'): {history['zero_shot']['accuracy']:.2f}")
    print(f"results: {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .flare.demo import run_demo

    return run_demo(args.workspace, sites=args.sites, threads=args.threads)


def _job(args: argparse.Namespace) -> int:
    """A runnable FLARE job for any algorithm, generated from the one template (jobs/fedrsclip)."""
    from .config import load_config
    from .flare.job import DEFAULT_JOB, prepare_job

    template = Path(args.template or DEFAULT_JOB)
    overrides = [f"algorithm={args.algorithm}", *(args.set or [])]
    template_cfg = template / "app" / "config" / "fedrsclip.yaml"
    load_config(template_cfg if template_cfg.is_file() else None, overrides)  # refuse bad settings before writing
    out = prepare_job(template, args.out, sites=args.sites, rounds=args.rounds, overrides=overrides)
    print(f"wrote {out}: algorithm {args.algorithm}"
          + (f", {args.sites} sites" if args.sites else "") + (f", {args.rounds} rounds" if args.rounds else ""))
    print(f"run it: nvflare simulator {out} -w workspaces/{out.name} -n {args.sites or 'N'} -t {args.sites or 'N'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .flare.report import report_command

    return report_command(args.workspace)


def build_parser() -> argparse.ArgumentParser:
    from .bench import add_bench_command
    from .data.cli import add_data_commands

    parser = argparse.ArgumentParser(prog="fedrsclip", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_commands(sub)

    p = sub.add_parser("algorithms", help="list the algorithms and what each sends")
    p.set_defaults(func=_algorithms)

    p = sub.add_parser("run", help="run a federation in this process (no FLARE), for quick experiments")
    p.add_argument("--config", help="YAML configuration (settings in README: Configuration)")
    p.add_argument("--manifest", help="partition manifest (fedrsclip data partition ...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=0.01")
    p.add_argument("--state-dir", help="keep each site's prompts here between runs")
    p.add_argument("--out", default="results.json", help="results file (JSON)")
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="the main FLARE job in the simulator, offline (synthetic data, random CLIP)")
    p.add_argument("--workspace", default="workspaces/demo")
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="simulator threads (default: one per site)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("job", help="generate a FLARE job for an algorithm from the jobs/fedrsclip template")
    p.add_argument("--algorithm", required=True, choices=list(ALGORITHMS))
    p.add_argument("--out", required=True, help="job folder to write (replaced if it exists)")
    p.add_argument("--sites", type=int, help="min_clients (and data.synthetic_sites for the synthetic demo)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fedrsclip setting for every site")
    p.add_argument("--template", default=None, help="job folder to start from (default: the repository's jobs/fedrsclip)")
    p.set_defaults(func=_job)

    p = sub.add_parser("report", help="print the per-round, per-site table of a FLARE workspace")
    p.add_argument("workspace")
    p.set_defaults(func=_report)
    add_bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if not hasattr(args, "func"):
        from .data.cli import run_data_command

        return run_data_command(args)
    try:
        return int(args.func(args) or 0)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # our errors carry what to fix
        logging.getLogger("fedrsclip").debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

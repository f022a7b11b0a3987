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

    return run_demo(args.workspace, sites=args.sites, threads=args.threads, he=args.he)


def _job(args: argparse.Namespace) -> int:
    """A runnable FLARE job for any algorithm, generated from the one template (jobs/fedrsclip)."""
    from .config import load_config
    from .flare.job import DEFAULT_JOB, prepare_job

    template = Path(args.template or DEFAULT_JOB)
    overrides = [f"algorithm={args.algorithm}", *(args.set or [])]
    template_cfg = template / "app" / "config" / "fedrsclip.yaml"
    load_config(template_cfg if template_cfg.is_file() else None, overrides)  # refuse bad settings before writing
    out = prepare_job(template, args.out, sites=args.sites, rounds=args.rounds, overrides=overrides, he=args.he)
    _job_reliability(out, args)
    print(f"wrote {out}: algorithm {args.algorithm}" + (", CKKS-encrypted updates" if args.he else "")
          + (f", {args.sites} sites" if args.sites else "") + (f", {args.rounds} rounds" if args.rounds else ""))
    if args.he:
        print(f"HE contexts for the simulator: fedrsclip he-context --simulator workspaces/{out.name}")
    print(f"run it: nvflare simulator {out} -w workspaces/{out.name} -n {args.sites or 'N'} -t {args.sites or 'N'}")
    return 0


def _job_reliability(out: Path, args: argparse.Namespace) -> None:
    """--min-clients / --train-timeout / --wait-after-min and --resume (README: Reliability)."""
    from .flare.job import resume_job, set_fault_tolerance

    if (args.min_clients, args.train_timeout, args.wait_after_min) != (None, None, None):
        values = set_fault_tolerance(out, args.min_clients, args.train_timeout, args.wait_after_min, args.sites)
        print(f"fault tolerance: {values}")
    if args.resume:
        resumed = resume_job(out, args.resume)
        print(f"resumes after round {resumed['rounds_done']} from {resumed['model']} ({resumed['rounds_left']} rounds "
              f"left); sites copy their state from {resumed['site_state']}. In the simulator use a NEW -w: it wipes "
              "its workspace, and the earlier run's sites' state is there")


def _he_context(args: argparse.Namespace) -> int:
    """CKKS contexts for the simulator's workspace or for unsigned (POC) kits."""
    from .he import CKKSParams
    from .flare.he_context import install_kit_contexts, prepare_simulator_contexts

    params = CKKSParams(args.poly_modulus_degree, tuple(int(b) for b in args.coeff_mod_bit_sizes.split(",")),
                        args.scale_bits)
    if args.simulator:
        folder, made = prepare_simulator_contexts(args.simulator, params, replace=args.replace)
        print(f"{'wrote' if made else 'kept the existing'} client and server contexts in {folder}"
              + ("" if made else " (--replace makes a new key)"))
    else:
        for folder in install_kit_contexts(args.kits, params):
            print(f"wrote a context into {folder}")
    print(f"CKKS: N={params.poly_modulus_degree}, coefficient moduli {list(params.coeff_mod_bit_sizes)}, scale "
          f"2^{params.scale_bits}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .flare.report import report_command

    return report_command(args.workspace)


def _experiment(args: argparse.Namespace) -> int:
    """A grid of FLARE simulator runs (fedrsclip.experiment)."""
    from .experiment import DataSource, parse_sites, run_experiment

    data = DataSource(manifest=args.manifest, dataset=args.dataset, root=args.root, data_seed=args.data_seed)
    return run_experiment(args.out, [a.strip() for a in args.algorithms.split(",") if a.strip()],
                          parse_sites(args.sites), [p.strip() for p in args.partition.split(",") if p.strip()],
                          [int(s) for s in args.seeds.split(",") if s.strip()], rounds=args.rounds,
                          overrides=args.set or [], data=data, template=args.template, max_threads=args.threads)


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
    p.add_argument("--he", action="store_true", help="CKKS-encrypted shared-prompt updates (contexts made in the "
                                                     "workspace's startup/ when missing)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("job", help="generate a FLARE job for an algorithm from the jobs/fedrsclip template")
    p.add_argument("--algorithm", required=True, choices=list(ALGORITHMS))
    p.add_argument("--out", required=True, help="job folder to write (replaced if it exists)")
    p.add_argument("--sites", type=int, help="min_clients (and data.synthetic_sites for the synthetic demo)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fedrsclip setting for every site")
    p.add_argument("--template", default=None, help="job folder to start from (default: the repository's jobs/fedrsclip)")
    p.add_argument("--he", action="store_true", help="the CKKS variant: sites encrypt their updates, the server adds "
                                                     "ciphertexts (needs HE contexts: see he-context)")
    p.add_argument("--min-clients", type=int, help="fewest sites a round needs (default: all --sites)")
    p.add_argument("--train-timeout", type=int, help="seconds a round waits for min-clients updates (0: forever)")
    p.add_argument("--wait-after-min", type=int, help="seconds a round waits for the others after min-clients")
    p.add_argument("--resume", metavar="RUN", help="continue an aborted run from its last global model: its server "
                                                   "app folder, simulator workspace or FL_global_model.npz")
    p.set_defaults(func=_job)

    from .he import DEFAULT_PARAMS

    p = sub.add_parser("he-context", help="make CKKS (TenSEAL) contexts for the simulator or for POC kits")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--simulator", metavar="WORKSPACE", help="into WORKSPACE/startup/ (both contexts; the "
                                                                "simulator copies them to every participant)")
    where.add_argument("--kits", metavar="PROD_DIR", help="into the unsigned kits of a POC prod_NN folder (the "
                                                          "server's kit gets the keyless context)")
    p.add_argument("--replace", action="store_true", help="make a new key even if the workspace has contexts")
    p.add_argument("--poly-modulus-degree", type=int, default=DEFAULT_PARAMS.poly_modulus_degree)
    p.add_argument("--coeff-mod-bit-sizes", default=",".join(map(str, DEFAULT_PARAMS.coeff_mod_bit_sizes)))
    p.add_argument("--scale-bits", type=int, default=DEFAULT_PARAMS.scale_bits)
    p.set_defaults(func=_he_context)

    p = sub.add_parser("report", help="a FLARE workspace: print its per-round, per-site table; an experiment "
                                      "folder: write report.md and PNG figures into it")
    p.add_argument("workspace")
    p.set_defaults(func=_report)

    from .experiment import DEFAULT_SITES, MAX_THREADS

    p = sub.add_parser("experiment", help="run a grid of algorithms x sites x partitions x seeds, each cell a FLARE "
                                          "simulator job (resumable); then: fedrsclip report DIR")
    p.add_argument("--out", required=True, help="experiment folder (a rerun skips its finished cells)")
    p.add_argument("--algorithms", default="fedrsclip,fedavg-pl,fedprox,fedotp",
                   help="comma-separated (fedrsclip algorithms lists them; ablations and local are algorithms too)")
    p.add_argument("--sites", default=DEFAULT_SITES, help=f"comma-separated site counts and/or 'centralized' "
                                                          f"(default {DEFAULT_SITES})")
    p.add_argument("--partition", default="uniform", help="comma-separated schemes: uniform, label-skew, dirichlet")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (train.seed)")
    p.add_argument("--rounds", type=int, help="FL rounds per cell (default: the job's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fedrsclip setting for every cell")
    p.add_argument("--manifest", help="real data: manifest path pattern with {sites} (and {partition}), e.g. "
                                      "ucm{sites}.json; the centralized cell pools a manifest's sites")
    p.add_argument("--dataset", help="real data partitioned here for every site count: the layout (ucmerced, "
                                     "nwpu, optimal31, imagefolder); with --root")
    p.add_argument("--root", help="the dataset folder (with --dataset)")
    p.add_argument("--data-seed", type=int, default=0, help="split and partition seed for --dataset (default 0)")
    p.add_argument("--threads", type=int, default=MAX_THREADS,
                   help=f"at most this many simulator threads per cell (default {MAX_THREADS}; one per site up to it)")
    p.add_argument("--template", default=None, help="job folder to start from (default: the repository's jobs/fedrsclip)")
    p.set_defaults(func=_experiment)
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

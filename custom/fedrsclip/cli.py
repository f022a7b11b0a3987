"""`fedrsclip <command>`: data preparation, in-process runs, the FLARE demo and reports.

One vocabulary, FLARE's: sites and rounds (`--sites`, `--rounds`), one `--algorithm` where one is meant
(`--algorithms` for a grid of several), every option described with its default (`fedrsclip COMMAND --help`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .algorithms import ALGORITHMS


class HelpFormatter(argparse.HelpFormatter):
    """Help with each option's default where it has one (not already said in its text)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default)" in text
            or "default" in text.lower()
            or action.default in (None, False, [], argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class RawHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, with the description and epilog kept as written (tables)."""


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults shown in the help."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        if formatter_class is argparse.RawDescriptionHelpFormatter:
            formatter_class = RawHelpFormatter
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # FLARE's components log their construction at INFO when a job is built here
        logging.getLogger("nvflare").setLevel(logging.WARNING)


def _algorithms(_args: argparse.Namespace) -> int:
    for algo in ALGORITHMS.values():
        sends = ", ".join(algo.sends) if algo.sends else "nothing"
        print(f"{algo.name:24s} sends: {sends:12s} {algo.description}")
    return 0


def _warn_privacy(cfg) -> None:
    from .privacy import dp_warning

    warning = dp_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    """The in-process runner (no FLARE): every site in this process; the results file of a FLARE run."""
    from .atomic import atomic_write_json
    from .config import load_config
    from .data.manifest import load_manifest
    from .inprocess import run_inprocess
    from .results_file import describe_data, load_results
    from .tools.reporting.run_table import format_table

    overrides = _overrides(args)
    if args.manifest:
        overrides.append(f"data.manifest={args.manifest}")
    if args.rounds is not None:
        overrides.append(f"train.rounds={args.rounds}")
    cfg = load_config(args.config, overrides)
    _warn_privacy(cfg)
    out = Path(args.out)
    if out.exists():  # never overwrite a file this command did not write
        try:
            load_results(out)
        except ValueError:
            print(
                f"error: --out {out} exists and is not a fedrsclip results file: choose another --out", file=sys.stderr
            )
            return 2
    if cfg.data.source in ("synthetic", "synthetic-mm"):
        from .data.source import synthetic_manifest

        manifest_path = synthetic_manifest(
            cfg.data,
            cfg.data.synthetic_dir or Path(cfg.data.cache_dir).parent / "fedrsclip-data",
            modalities=cfg.multimodal.modalities,
        )
    elif cfg.data.manifest:
        manifest_path = Path(cfg.data.manifest)
    else:
        print(
            "error: give --manifest (or data.manifest in the configuration, or data.source=synthetic)", file=sys.stderr
        )
        return 2
    results = run_inprocess(
        cfg,
        load_manifest(manifest_path),
        state_dir=args.state_dir,
        pooled=args.centralized,
        data_description=describe_data(cfg.data, manifest_path, cfg.multimodal.modalities),
    )
    results["config"] = cfg.to_dict()
    atomic_write_json(out, results)
    print(format_table(results))
    print(f"results file: {out} (figures: fedrsclip report {out})")
    return 0 if results["status"] == "finished" else 1


def _overrides(args: argparse.Namespace, with_algorithm: bool = True) -> list[str]:
    """--set values, with --algorithm (unless `with_algorithm` is false: the caller places it) and
    --class-descriptions as the settings they stand for (one schema)."""
    overrides = list(getattr(args, "set", None) or [])
    for option, key in (("algorithm", "algorithm"), ("class_descriptions", "prompt.class_descriptions")):
        value = getattr(args, option, None)
        if value is None:
            continue
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            raise ValueError(f"--{option.replace('_', '-')} and --set {key}=... say the same thing: give one")
        if option == "class_descriptions":
            value = str(Path(value).expanduser().resolve())
        if option != "algorithm" or with_algorithm:
            overrides.append(f"{key}={value}")
    return overrides


def _demo(args: argparse.Namespace) -> int:
    from .tools.demo import run_demo

    return run_demo(
        args.workspace,
        sites=args.sites,
        threads=args.threads,
        he=args.he,
        rounds=args.rounds,
        overrides=_overrides(args),
        modalities=args.modalities,
    )


def _job(args: argparse.Namespace) -> int:
    """A runnable FLARE job for any algorithm (fedrsclip.flare.job): checked, then written into --out."""
    from .flare.job import JobSpec, describe, find_resume, write_job
    from .flare.simulator import check_workspace, simulator_command

    resume = find_resume(args.resume) if args.resume else None
    spec = JobSpec(
        name=Path(args.out).name if args.name is None else args.name,
        sites=args.sites,
        rounds=args.rounds,
        overrides=tuple(_overrides(args, with_algorithm=False)),
        settings=Path(args.settings) if args.settings else None,
        he=args.he,
        min_clients=args.min_clients,
        train_timeout=args.train_timeout or 0,
        wait_after_min=args.wait_after_min or 0,
        resume=resume,
        torch_threads=args.torch_threads,
        modalities=args.modalities,
    )
    if args.algorithm and spec.config().algorithm != args.algorithm:  # the settings' own one needs no override
        spec = dataclasses.replace(spec, overrides=(f"algorithm={args.algorithm}", *spec.overrides))
    _warn_privacy(spec.config())
    _note_modalities(spec.config())
    out = write_job(spec, args.out)
    print(f"wrote {out}: {describe(spec)}")
    if resume is not None:
        print(
            f"resumes after round {resume.rounds_done} from {resume.model}; sites copy their state from "
            f"{resume.site_state}"
        )
    workspace = _free_workspace(out, resume.source if resume else None, check_workspace)
    if args.he:
        print(f"HE contexts for the simulator: fedrsclip he-context --simulator {workspace}")
    print("run it: " + " ".join(simulator_command(out, workspace, spec.sites, spec.sites, portable=True)))
    return 0


def _note_modalities(cfg) -> None:
    """Say when MIM is asked for but no site of the job holds paired modalities (it then does nothing)."""
    items = cfg.multimodal.site_modalities()
    if items is not None and cfg.multimodal.modules(True)[1] and not any(len(mods) > 1 for mods in items):
        print(
            f"note: MIM is inactive: no site holds paired modalities (multimodal.modalities "
            f"{cfg.multimodal.modalities}; a site holding both is written s2+s1)",
            file=sys.stderr,
        )


def _free_workspace(job: Path, resume: Path | None, check) -> Path:
    """A simulator workspace for `job` that the simulator may empty: not the job folder, not inside it or around
    it, not the run being resumed, and either new or an earlier simulator run's (`check`)."""
    taken = [job.resolve()] + ([Path(resume).expanduser().resolve()] if resume else [])
    for index in range(1, 100):
        candidate = job.parent / f"{job.name}-run{'' if index == 1 else index}"
        resolved = candidate.resolve()
        if any(resolved == t or t in resolved.parents or resolved in t.parents for t in taken):
            continue
        try:
            check(resolved)
        except ValueError:
            continue
        return candidate
    raise ValueError(f"no free simulator workspace next to {job}: give the simulator a new -w folder")


def _he_context(args: argparse.Namespace) -> int:
    """CKKS contexts for the simulator's workspace or for unsigned (POC) kits."""
    from .flare.he.context import install_kit_contexts, prepare_simulator_contexts
    from .he import CKKSParams

    params = CKKSParams(
        args.poly_modulus_degree, tuple(int(b) for b in args.coeff_mod_bit_sizes.split(",")), args.scale_bits
    )
    if args.simulator:
        folder, made = prepare_simulator_contexts(args.simulator, params, force=args.force)
        print(
            f"{'wrote' if made else 'kept the existing'} client and server contexts in {folder}"
            + ("" if made else " (--force makes a new key: every model saved under the old one becomes undecryptable)")
        )
    else:
        for folder in install_kit_contexts(args.kits, params, force=args.force):
            print(f"wrote a context into {folder}")
    print(
        f"CKKS: N={params.poly_modulus_degree}, coefficient moduli {list(params.coeff_mod_bit_sizes)}, scale "
        f"2^{params.scale_bits}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    """An experiment folder: write its report.md and figures, print the report (0; 1 when it has no finished cell).
    Otherwise print the table of the run in `workspace` (a simulator workspace, a downloaded job result, a results
    file) and write its figures: 0 for a finished run, 2 for a failed or incomplete one, 1 when there is no
    readable results file."""
    from .predictions import gather_site_predictions
    from .results_file import RESULTS_FILE, find_results, load_results
    from .tools.experiments.layout import is_experiment
    from .tools.reporting.run_table import format_table
    from .zeroshot import chance_warning, pool

    if is_experiment(args.workspace):
        from .tools.reporting.report import write_report  # matplotlib: only for an experiment's figures

        try:
            path = write_report(args.workspace)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path.read_text(encoding="utf-8"))
        print(f"report: {path} (figures next to it)")
        return 0
    try:
        path = find_results(args.workspace)
        results = load_results(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    workspace = Path(args.workspace).expanduser()
    # a simulation keeps every site's (site-local) predictions on this machine: the zero-shot reference and the
    # final model's confusion matrix come from them
    predictions = gather_site_predictions(workspace if workspace.is_dir() else path.parent, results)
    if not results.get("zero_shot"):
        pooled = pool([p.get("zero_shot") for p in predictions.values()])
        if pooled:
            results = {**results, "zero_shot": {**pooled, "warning": chance_warning(pooled, "the sites' test splits")}}
    print(format_table(results))
    print(f"results file: {path}")
    if not args.no_figures:
        for figure in _run_figures(
            results,
            predictions,
            Path(args.figures) if args.figures else path.parent,
            "" if path.name == RESULTS_FILE else f"{path.stem}-",
        ):
            print(f"figure: {figure}")
    return 0 if results.get("status") == "finished" else 2


def _run_figures(results: dict, predictions: dict, folder: Path, prefix: str) -> list[Path]:
    import numpy as np

    from .tools.reporting.figures import confusion_figure, run_figures  # matplotlib
    from .tools.reporting.run_table import caveat

    made = run_figures(results, folder, prefix)
    sites = [p for p in predictions.values() if p.get("confusion")]
    if sites and len({tuple(p["classes"]) for p in sites}) == 1:
        counts = sum(np.asarray(p["confusion"]) for p in sites)
        made.append(
            confusion_figure(
                counts,
                sites[0]["classes"],
                f"Confusion matrix of the final model: "
                f"{results.get('algorithm')}, summed over {len(sites)} sites' test splits "
                f"({int(counts.sum())} images)",
                folder / f"{prefix}confusion_matrix.png",
                caveat(results),
            )
        )
    return made


def _zeroshot(args: argparse.Namespace) -> int:
    """LRSCLIP's zero-shot protocol on a manifest (fedrsclip.tools.zeroshot)."""
    from .config import load_config
    from .tools.zeroshot import format_results, run_zeroshot

    cfg = load_config(args.config, _overrides(args))
    results = run_zeroshot(cfg, args.manifest, args.out, template=args.template, split=args.split)
    print(format_results(results))
    shown = "per-class AP" if results["accuracy"] is None else "confusion matrix"
    print(f"results file: {args.out}; {shown}: {results['figure']}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    """A grid of FLARE simulator runs (fedrsclip.tools.experiments)."""
    from .tools.experiments.grid import DataSource, parse_sites
    from .tools.experiments.runner import run_experiment

    data = DataSource(
        manifest=args.manifest,
        dataset=args.dataset,
        root=args.root,
        data_seed=args.data_seed,
        modalities=args.modalities,
    )
    return run_experiment(
        args.out,
        [a.strip() for a in args.algorithms.split(",") if a.strip()],
        parse_sites(args.sites),
        [p.strip() for p in args.partition.split(",") if p.strip()],
        args.seeds,
        rounds=args.rounds,
        overrides=args.set or [],
        data=data,
        settings=args.settings,
        max_threads=args.threads,
        ablate=args.ablate,
    )


def build_parser() -> argparse.ArgumentParser:
    from .data.cli import add_data_commands, checked, modalities_option, non_negative_int, positive_int
    from .he import DEFAULT_PARAMS
    from .tools.bench.cli import add_bench_command
    from .tools.experiments.grid import DEFAULT_SITES, MAX_THREADS
    from .zeroshot import DEFAULT_TEMPLATE

    # counts and seeds are refused by argparse, naming the option, before anything is written
    seed_list = checked(
        lambda text: [int(x) for x in text.split(",") if x.strip()],
        lambda seeds: bool(seeds) and all(0 <= x < 2**32 for x in seeds),
        "comma-separated seeds, each an integer from 0 to 2^32 - 1",
    )

    algorithms = list(ALGORITHMS)
    parser = Parser(prog="fedrsclip", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedrsclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, FLARE's INFO lines included")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    add_data_commands(sub)

    p = sub.add_parser(
        "algorithms",
        help="list the algorithms and what each sends",
        description="List the algorithms (--algorithm), what each site sends per round, and what each is.",
    )
    p.set_defaults(func=_algorithms)

    p = sub.add_parser(
        "run",
        help="run every site in this process (no FLARE), with the FLARE job's semantics, for quick experiments",
        description="Every site of a manifest in this process, with the FLARE job's round, gate, "
        "mean and results file; prints the per-round, per-site table.",
    )
    p.add_argument("--algorithm", choices=algorithms, help="the algorithm (default: the configuration's, fedrsclip)")
    p.add_argument("--config", help="YAML configuration (settings in README: Configuration)")
    p.add_argument("--manifest", help="partition manifest (fedrsclip data partition ...)")
    p.add_argument("--rounds", type=positive_int, help="rounds (default: train.rounds, 10)")
    p.add_argument(
        "--class-descriptions",
        metavar="FILE",
        help="YAML/JSON class name -> description: the class "
        "text of the prompts and of the zero-shot reference (prompt.class_descriptions)",
    )
    p.add_argument(
        "--centralized", action="store_true", help="every site's data pooled at one site (the centralized reference)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. train.lr=0.01 (repeatable)"
    )
    p.add_argument("--state-dir", help="keep each site's prompts here between runs (default: not kept)")
    p.add_argument("--out", default="results.json", help="results file (JSON, the format of a FLARE run's)")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "demo",
        help="the main FLARE job in the simulator, offline (synthetic data, random CLIP)",
        description="Make the job (offline demo settings) and run it in FLARE's simulator, with a "
        "progress line per round; then print the per-round, per-site table.",
    )
    p.add_argument(
        "--workspace",
        default="workspaces/demo",
        help="the simulator workspace (new, or an earlier simulator run's: the simulator empties it)",
    )
    p.add_argument("--sites", type=positive_int, default=10, help="number of sites (simulated clients)")
    p.add_argument("--rounds", type=positive_int, default=None, help="rounds (default: the job's, 10)")
    p.add_argument("--algorithm", choices=algorithms, help="the algorithm (default: the job's, fedrsclip)")
    p.add_argument("--threads", type=positive_int, default=None, help="simulator threads (default: one per site)")
    p.add_argument(
        "--he",
        action="store_true",
        help="CKKS-encrypted shared-prompt updates (contexts made in the workspace's startup/ when missing)",
    )
    p.add_argument(
        "--modalities",
        type=modalities_option,
        help="a multi-modal federation on synthetic S2/S1 scenes: what each site holds, "
        "e.g. s2,s1 (alternating) or s2,s1,s2+s1 (README: Multi-modal federations)",
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "job",
        help="make a FLARE job for an algorithm (built with FLARE's job API)",
        description="Write a FLARE job folder for any algorithm, checked before anything is written, "
        "and print the command that runs it in the simulator.",
    )
    p.add_argument(
        "--algorithm", choices=algorithms, help="the algorithm the sites train (default: the settings', fedrsclip)"
    )
    p.add_argument(
        "--out",
        required=True,
        help="job folder to write: new, empty, or one this command made (it is "
        "then replaced; nothing else is ever deleted)",
    )
    p.add_argument("--name", help="the job's name (default: the --out folder's name)")
    p.add_argument(
        "--sites",
        type=positive_int,
        default=10,
        help="the sites the job is made for: min_clients, and the synthetic demo's partition",
    )
    p.add_argument("--rounds", type=positive_int, help="rounds (default: the settings' train.rounds)")
    p.add_argument(
        "--class-descriptions",
        metavar="FILE",
        help="YAML/JSON class name -> description; the job carries a copy to every site (prompt.class_descriptions)",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a fedrsclip setting for every site (repeatable)"
    )
    p.add_argument(
        "--settings", default=None, help="the job's fedrsclip YAML (default: the package's offline demo settings)"
    )
    p.add_argument(
        "--torch-threads",
        type=non_negative_int,
        default=1,
        help="torch threads per site process (0: all cores; 1 suits many simulated sites)",
    )
    p.add_argument(
        "--he",
        action="store_true",
        help="the CKKS variant: sites encrypt their updates, the server adds "
        "ciphertexts (needs HE contexts: see he-context)",
    )
    p.add_argument("--min-clients", type=positive_int, help="fewest sites a round needs (default: all --sites)")
    p.add_argument(
        "--train-timeout",
        type=non_negative_int,
        help="seconds a round waits for min-clients updates (default 0: forever)",
    )
    p.add_argument(
        "--wait-after-min",
        type=non_negative_int,
        help="seconds a round waits for the others after min-clients (default 0)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an aborted run from its last global model: its server "
        "app folder, simulator workspace or FL_global_model.npz",
    )
    p.add_argument(
        "--modalities",
        type=modalities_option,
        help="a multi-modal federation: the sites' modalities, e.g. s2,s1 (repeated over "
        "the sites; s2+s1 a site holding both): an adapter per modality, averaged "
        "among its sites only (README: Multi-modal federations)",
    )
    p.set_defaults(func=_job)

    p = sub.add_parser(
        "he-context",
        help="make CKKS (TenSEAL) contexts for the simulator or for POC kits",
        description="Make CKKS contexts: both into a simulator workspace's startup/, or into the "
        "unsigned kits of a POC (the server's without the secret key).",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--simulator",
        metavar="WORKSPACE",
        help="into WORKSPACE/startup/ (both contexts; the simulator copies them to every participant)",
    )
    where.add_argument(
        "--kits",
        metavar="PROD_DIR",
        help="into the unsigned kits of a POC prod_NN folder (the server's kit gets the keyless context)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="make a new key even where there is one (every model saved under the old key becomes undecryptable)",
    )
    p.add_argument(
        "--poly-modulus-degree",
        type=int,
        default=DEFAULT_PARAMS.poly_modulus_degree,
        help="CKKS ring dimension N (N/2 values per ciphertext)",
    )
    p.add_argument(
        "--coeff-mod-bit-sizes",
        default=",".join(map(str, DEFAULT_PARAMS.coeff_mod_bit_sizes)),
        help="bit sizes of the coefficient moduli, comma-separated",
    )
    p.add_argument("--scale-bits", type=int, default=DEFAULT_PARAMS.scale_bits, help="log2 of the CKKS scale")
    p.set_defaults(func=_he_context)

    p = sub.add_parser(
        "report",
        help="a run: print its per-round, per-site table and write its PNG figures; an "
        "experiment folder: write report.md and PNG figures into it",
        description="Report a run (a simulator workspace, a downloaded job result or a results file "
        "of fedrsclip run) or an experiment folder.",
    )
    p.add_argument(
        "workspace",
        metavar="RUN",
        help="a simulator workspace (-w), a downloaded job result, a "
        "fedrsclip_results.json or fedrsclip run's --out, or an "
        "experiment folder",
    )
    p.add_argument("--figures", metavar="DIR", help="where a run's figures go (default: next to its results file)")
    p.add_argument("--no-figures", action="store_true", help="print the table only")
    p.set_defaults(func=_report)

    p = sub.add_parser(
        "zeroshot",
        help="zero-shot CLIP on a manifest (LRSCLIP's protocol): accuracy, per class, and a confusion-matrix PNG",
        description="LRSCLIP's zero-shot protocol (its Table IV): one template, every image of the "
        "dataset (train and test), top-1 accuracy; on any backbone (--set model.*).",
    )
    p.add_argument(
        "--manifest",
        required=True,
        help="partition manifest (fedrsclip data partition ...); every site's images are used",
    )
    p.add_argument(
        "--out",
        required=True,
        help="results file (JSON) to write; the confusion matrix goes next to it as <name>-confusion.png",
    )
    p.add_argument(
        "--template",
        default=DEFAULT_TEMPLATE.replace("{}", "{class}"),
        help="the prompt, with {class} where the class text goes",
    )
    p.add_argument(
        "--split",
        default="all",
        choices=["all", "test"],
        help="all: train and test (the protocol's); test: the test splits only",
    )
    p.add_argument(
        "--class-descriptions",
        metavar="FILE",
        help="YAML/JSON class name -> description used as the class text (prompt.class_descriptions)",
    )
    p.add_argument("--config", help="YAML configuration (model.* and data.* settings are used)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a setting, e.g. model.pretrained=FILE (repeatable)"
    )
    p.set_defaults(func=_zeroshot)

    p = sub.add_parser(
        "experiment",
        help="run a grid of algorithms x sites x partitions x seeds, each cell a FLARE "
        "simulator job (resumable); then: fedrsclip report DIR",
        description="Run a grid of FLARE simulator jobs; a rerun skips the finished cells.",
    )
    p.add_argument("--out", required=True, help="experiment folder (a rerun skips its finished cells)")
    p.add_argument(
        "--algorithms",
        default="fedrsclip,fedavg-pl,fedprox,fedotp",
        help="comma-separated: the grid's rows (fedrsclip algorithms lists them; ablations and local are "
        "algorithms too)",
    )
    p.add_argument("--sites", default=DEFAULT_SITES, help="comma-separated site counts and/or 'centralized'")
    p.add_argument("--partition", default="uniform", help="comma-separated schemes: uniform, label-skew, dirichlet")
    p.add_argument("--seeds", default=[0], type=seed_list, help="comma-separated training seeds (train.seed)")
    p.add_argument("--rounds", type=positive_int, help="FL rounds per cell (default: the job's)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a fedrsclip setting for every cell (repeatable)"
    )
    p.add_argument(
        "--manifest",
        help="real data: manifest path pattern with {sites} (and {partition}), e.g. "
        "ucm{sites}.json; the centralized cell pools a manifest's sites",
    )
    p.add_argument(
        "--dataset",
        help="real data partitioned here for every site count: the layout (ucmerced, "
        "nwpu, optimal31, imagefolder); with --root",
    )
    p.add_argument("--root", help="the dataset folder (with --dataset)")
    p.add_argument("--data-seed", type=non_negative_int, default=0, help="split and partition seed for --dataset")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=MAX_THREADS,
        help="at most this many simulator threads per cell (one per site up to it)",
    )
    p.add_argument(
        "--settings", default=None, help="the jobs' fedrsclip YAML (default: the package's offline demo settings)"
    )
    p.add_argument(
        "--modalities",
        type=modalities_option,
        help="a multi-modal federation in every cell: the sites' modalities, e.g. "
        "s2,s1,s2+s1 (synthetic S2/S1 scenes unless --manifest/--dataset; README: "
        "Multi-modal federations)",
    )
    p.add_argument(
        "--ablate",
        metavar="MODULES",
        help="with --modalities: comma-separated multi-modal modules (mf, "
        "fw, mim), each switched off in cells of its own next to the "
        "full framework's",
    )
    p.set_defaults(func=_experiment)
    add_bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if not hasattr(args, "func"):
            from .data.cli import run_data_command

            return run_data_command(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `fedrsclip report RUN | head`: the reader left; stop quietly, as head's writers do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, RuntimeError, OSError) as exc:  # our errors carry what to fix
        logging.getLogger("fedrsclip").debug("details", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

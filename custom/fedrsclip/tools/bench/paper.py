"""`fedrsclip bench --paper-scale N`: the paper's UC Merced federation (Table I: 10 or 40 sites) in the FLARE simulator
with ViT-B/16 on one machine, with its wall time per round, memory and FLARE's share.

What runs, and what stands in for what this machine lacks:

* weights: ViT-B/16 with RANDOM weights (open_clip's initialisation, seed 0) written once to a local checkpoint file
  and read as real weights are. Time and memory do not depend on the weights; accuracy means nothing.
* data: Table I's partition of UC Merced (2,100 images, half for training: 1,050 / N training and as many test
  images per site: 105 + 105 at 10 sites, 26/27 + 26/27 at 40) built from the images at hand. Where only the
  210-image sample is (`../shared/data/ucmerced-sample`: 10 per class), its images are REUSED: each class's sample
  images (its training ones for training, its test ones for testing) are dealt round-robin over the sites as the
  full dataset's would be, each standing for 10 of the full dataset's. At 10 sites every site holds the whole
  sample; a site never holds one image twice while a class has at least as many images in a split as a site takes
  of it (5 at 10 sites; with fewer, e.g. `--images` holding 2 per class, the note says how often it does).
* features: by default the sites start with their feature caches filled (`--paper-scale N` first encodes each
  distinct image once, in one process, and writes every site's cache, `features.seed_cache`), as after a first
  run; `--cold` leaves the caches empty, so that round 1 loads the whole CLIP and extracts at every site at once.
* the job: the package's training defaults (the paper's: batch 32, one local epoch, lr 0.001), one torch thread
  per site process (JobSpec), a data.cache_dir shared by the sites (one text tower file, its pages shared).

Measured: the job's wall time, each round's (the results file: the server's clock), the median of the rounds after
the first, the slowest site's task seconds and FLARE's share of the round (`overhead.overhead_from_results`), and
memory sampled while it runs (`memwatch.MemoryWatch`: the whole machine, the run's processes, each site).
Everything goes to `<out>/paper-scale-<N>.json` (atomically) and, as the last line, to stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from ...atomic import atomic_write_json, to_json
from ...flare.simulator import check_workspace, last_error_line, simulator_command
from ...results_file import SIMULATOR_RESULTS, load_results
from .common import DEFAULT_IMAGES, device_name, load_average, progress
from .overhead import overhead_from_results
from .sitestart import VITB16, vitb16_overrides, write_random_checkpoint

FULL_PER_CLASS = 100  # UC Merced: 21 classes x 100 images
TRAIN_FRACTION = 0.5  # the paper's UC Merced split (the reader's default)
DEFAULT_THREADS = {10: 10, 40: 10}  # simulator threads: one process per site at 10; at 40, 10 processes at a time
MADE_BY = "fedrsclip bench --paper-scale"
MARKER = ".fedrsclip-paper-scale.json"  # in an output folder this command made: the files it wrote, their hashes


def reused_partition(root: str | Path, sites: int, seed: int = 0, per_class: int | None = None) -> dict[str, Any]:
    """Table I's uniform UC Merced partition over `sites` sites, from the UC Merced images under `root`.

    The images are split per class into train and test (`TRAIN_FRACTION`, seeded, as `fedrsclip data partition`);
    each class then contributes FULL_PER_CLASS x TRAIN_FRACTION items to each split, dealt round-robin over the
    sites (carrying on from class to class, so every site gets the floor or ceiling of the total / sites), each item
    one of the class's images in that split, a site taking them in turn from its own offset (no image twice at a
    site while the class has enough: with fewer images in a split than a site takes of the class, a site holds some
    several times, and the note says so). With the full dataset every image is used once; with fewer, reused.
    per_class: items per class and split (default: the full dataset's, FULL_PER_CLASS x TRAIN_FRACTION = 50).
    Returns the manifest (`fedrsclip.data.manifest` format; a "note" says how images were reused).
    """
    from ...data.manifest import MANIFEST_VERSION
    from ...data.readers import list_dataset
    from ...data.split import split_train_test

    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    listing = list_dataset("ucmerced", root, verify=False, progress=False)
    train, test = split_train_test(listing.records, TRAIN_FRACTION, seed)
    per_class = per_class or round(FULL_PER_CLASS * TRAIN_FRACTION)
    names = [f"site-{i + 1}" for i in range(sites)]
    parts: dict[str, dict[str, list]] = {name: {"train": [], "test": []} for name in names}
    used: dict[str, int] = {}
    for split, records in (("train", train), ("test", test)):
        by_class: dict[int, list[str]] = defaultdict(list)
        for rel, label in records:
            by_class[int(label)].append(rel)
        dealt = 0
        for label in sorted(by_class):
            files = sorted(by_class[label])
            taken: dict[int, int] = defaultdict(int)
            for _ in range(per_class):
                site = dealt % sites
                rel = files[(site + taken[site]) % len(files)]
                taken[site] += 1
                dealt += 1
                parts[names[site]][split].append([rel, label])
                used[rel] = used.get(rel, 0) + 1
    for part in parts.values():
        for split in part:
            part[split].sort(key=lambda rec: (rec[1], rec[0]))
    distinct = len(listing.records)
    at_a_site = _repeats_at_a_site(parts)
    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": "ucmerced",
        "root": str(Path(listing.root).resolve()),
        "classes": list(listing.classes),
        "seed": int(seed),
        "scheme": "uniform",
        "train_fraction": TRAIN_FRACTION,
        "sites": parts,
        "skipped": [],
        "note": (
            f"Table I's UC Merced partition over {sites} sites ({per_class * len(listing.classes)} "
            f"training and as many test items) from {distinct} distinct images"
            + (
                ""
                if max(used.values()) == 1
                else f": images REUSED, each up to {max(used.values())} times over the sites"
            )
            + (
                ""
                if at_a_site == 1
                else f"; a site holds the same image up to {at_a_site} times (a class has fewer images in a split "
                "than a site takes of it)"
            )
        ),
    }
    if listing.class_folders is not None:
        manifest["class_folders"] = list(listing.class_folders)
    return manifest


def prepare_child(spec: str) -> None:
    """In a fresh process: encode each distinct image of the job's manifest once with the job's backbone, fill every
    site's feature caches (`features.seed_cache`), free the image tower (the text tower file is written); print one
    JSON line (seconds, images, peak RSS)."""
    import torch

    from ...backbone import open_backbone
    from ...config import load_config
    from ...data.composite import settings_from_config
    from ...data.manifest import load_manifest, site_split
    from ...features import extract_features, seed_cache

    args = json.loads(spec)
    start = time.perf_counter()
    torch.set_num_threads(int(args["threads"]) if args.get("threads") else torch.get_num_threads())
    cfg = load_config(args["job_config"], args["overrides"])
    manifest = load_manifest(cfg.data.manifest)
    image = settings_from_config(cfg.data, manifest.get("modality"))
    backbone = open_backbone(cfg.model, cfg.data.cache_dir)
    splits = {
        (site, split): site_split(manifest, site, split, root=cfg.data.root)
        for site in manifest["sites"]
        for split in ("train", "test")
    }
    distinct = {str(path): (path, label) for items in splits.values() for path, label in items}
    pool = extract_features(backbone, list(distinct.values()), progress=False, image=image, desc="distinct images")
    encoded = time.perf_counter()
    for (site, split), items in splits.items():
        seed_cache(backbone, items, Path(cfg.data.cache_dir) / site, split, pool, image)
    backbone.release_image_tower()
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "encode_seconds": encoded - start,
                "distinct_images": len(distinct),
                "site_splits": len(splits),
                "peak_rss_mb": _vmhwm_self_mb(),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def _vmhwm_self_mb() -> float | None:
    from .memwatch import _vmhwm_mb

    return _vmhwm_mb(os.getpid())


def _rounds_table(results: dict) -> list[dict[str, Any]]:
    rows = []
    for rnd in results.get("rounds", []):
        if not isinstance(rnd.get("started"), (int, float)) or not isinstance(rnd.get("finished"), (int, float)):
            continue
        sites = [s for s in (rnd.get("sites") or {}).values() if isinstance(s.get("seconds"), (int, float))]
        rows.append(
            {
                "round": rnd["round"],
                "wall_s": rnd["finished"] - rnd["started"],
                "sites_reported": len(sites),
                "sites_missing": sum(1 for s in (rnd.get("sites") or {}).values() if s.get("missing")),
                "slowest_site_s": max((s["seconds"] for s in sites), default=None),
                "median_site_s": statistics.median([s["seconds"] for s in sites]) if sites else None,
            }
        )
    return rows


def check_paper_options(sites: int, threads: int | None, rounds: int, gpu: str | None = None) -> None:
    """ValueError naming the option when --paper-scale, --sim-threads or --rounds is out of range, or --gpu is not
    the simulator's GPU list or has more groups than sites (the simulator runs at most one thread per site and
    needs a site per GPU group; it would stop with the reason only in its log)."""
    for option, value in (("--paper-scale", sites), ("--sim-threads", threads), ("--rounds", rounds)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    if threads is not None and threads > sites:
        raise ValueError(
            f"--sim-threads {threads} is more than the {sites} sites of --paper-scale {sites}: the simulator runs at "
            f"most one thread per site; give --sim-threads {sites} or fewer"
        )
    if gpu:
        from nvflare.private.fed.utils.fed_utils import split_gpus  # the simulator's own reading of -gpu

        try:
            groups = split_gpus(gpu)
        except ValueError as exc:
            raise ValueError(f"--gpu {gpu} is not a GPU list such as 0 or 0,1 or [0,1],[2]: {exc}") from None
        if len(groups) > sites:
            raise ValueError(
                f"--gpu {gpu} makes {len(groups)} GPU groups, more than the {sites} sites: the simulator needs a site "
                "per group; list fewer GPUs"
            )


def written_files(sites: int) -> tuple[str, ...]:
    """The files `run_paper_scale` writes (again) by name at the top of its output folder."""
    return (f"manifest-{sites}.json", "ws.log", f"paper-scale-{sites}.json")


def check_paper_out(out: Path, sites: int, option: str = "--out-dir") -> None:
    """The output folder must be new, empty or an earlier output of `fedrsclip bench --paper-scale` (its MARKER)
    whose files this run writes again are as it wrote them, its job folder the job `write_job` made and its ws/ a
    simulator workspace: JobError/ValueError naming `option` otherwise. Other files in an earlier output are left
    alone; nothing is ever deleted or overwritten that this command did not write."""
    from ...flare.job import check_replaceable

    check_replaceable(out, option, made_by=MADE_BY, marker=MARKER, replaced=written_files(sites))
    check_replaceable(out / "job" / f"paper-scale-{sites}", option, made_by=MADE_BY)
    try:
        check_workspace(out / "ws")
    except ValueError as exc:
        raise ValueError(f"{option} {out}: {exc}") from None


def run_paper_scale(
    sites: int,
    out_dir: str | Path,
    threads: int | None = None,
    rounds: int = 3,
    images: str | Path = DEFAULT_IMAGES,
    cold: bool = False,
    gpu: str | None = None,
    overrides: Sequence[str] = (),
    interval: float = 1.0,
    per_class: int | None = None,
    arch: str = VITB16,
) -> dict[str, Any]:
    """Run the paper-scale job (module doc) and return its figures (also written to <out_dir>/paper-scale-N.json).

    threads: simulator threads (default: DEFAULT_THREADS, else one per site; at most `sites`). gpu: the simulator's
    -gpu list (e.g. "0"). overrides: more job settings ("section.key=value"), e.g. model.text_precision=bf16.
    per_class: items per class and split (`reused_partition`; default: Table I's). arch: the model (random weights;
    tests: fedrsclip-tiny). Every input and the output folder (`check_paper_out`) are checked before anything is
    written: FileNotFoundError without UC Merced images, ValueError (DataError, ConfigError, JobError) for images
    that are not a UC Merced folder, bad options or settings, or an output folder that is not this command's.
    """
    from ...config import ConfigError
    from ...data.errors import DataError
    from ...data.manifest import write_manifest
    from ...flare.job import JobSpec, mark_written, write_job

    check_paper_options(sites, threads, rounds, gpu)
    threads = min(threads or DEFAULT_THREADS.get(sites, sites), sites)
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(
            f"no UC Merced images at {images}: give --images DIR (the UCMerced_LandUse folder or the sample)"
        )
    try:  # reads only: bad --images stop here
        manifest = reused_partition(images, sites, per_class=per_class)
    except DataError as exc:
        raise DataError(f"--images {images}: {exc}") from None
    out = Path(out_dir).expanduser().absolute()
    check_paper_out(out, sites)
    manifest_path, checkpoint_path, cache = (
        out / f"manifest-{sites}.json",
        out / f"{arch.lower()}-random.pt",
        out / "cache",
    )
    settings = [*vitb16_overrides(checkpoint_path, manifest_path, cache, arch), *overrides]
    spec = JobSpec(name=f"paper-scale-{sites}", sites=sites, rounds=rounds, overrides=tuple(settings))
    try:
        spec.config()  # a bad --set stops here, before anything is written
    except ConfigError as exc:
        raise ConfigError(f"--set: {exc}") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out-dir {out} cannot be made ({exc}): choose another --out-dir") from None
    mark = partial(mark_written, out, made_by=MADE_BY, marker=MARKER)
    mark([])  # the folder is this command's from now on: a rerun may write into it again
    ws = out / "ws"
    begin = time.perf_counter()
    report: dict[str, Any] = {
        "sites": sites,
        "threads": threads,
        "rounds": rounds,
        "gpu": gpu,
        "cold": cold,
        "load_average_start": load_average(),
        "device": _device(gpu),
    }
    progress(f"paper scale: {sites} sites, {rounds} rounds, {threads} simulator threads; output in {out}")
    checkpoint = write_random_checkpoint(checkpoint_path, arch)
    write_manifest(manifest, manifest_path)
    mark([manifest_path.name])
    counts = [len(p["train"]) for p in manifest["sites"].values()]
    report["data"] = {
        "manifest": str(manifest_path),
        "note": manifest["note"],
        "source": str(images),
        "train_per_site": sorted(set(counts)),
        "test_per_site": sorted({len(p["test"]) for p in manifest["sites"].values()}),
        "same_image_at_a_site_max": _repeats_at_a_site(manifest["sites"]),
    }
    report["model"] = f"{arch} with RANDOM weights (open_clip init, seed 0) from the local file {checkpoint.name}"
    job = write_job(spec, out / "job" / spec.name)
    if not cold:
        progress("paper scale: encoding each distinct image once and filling every site's feature cache")
        report["prepare"] = _prepare(spec)
        progress(
            f"paper scale: caches filled in {report['prepare']['seconds']:.0f} s "
            f"({report['prepare']['distinct_images']} distinct images)"
        )
    cmd = simulator_command(job, ws, sites, threads) + (["-gpu", gpu] if gpu else [])
    report["command"] = " ".join(cmd)
    progress(f"paper scale: {report['command']}")
    try:
        report.update(_simulate(cmd, out / "ws.log", interval))
    finally:  # also when interrupted: the log is this command's to replace
        mark(["ws.log"] if (out / "ws.log").is_file() else [])
    if report["simulator_exit_code"] != 0:
        report["simulator_error"] = last_error_line(out / "ws.log")
    try:
        results = load_results(ws / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        results = {}
        report["results_error"] = f"no results file: {exc}"
    table = _rounds_table(results)
    later = [r["wall_s"] for r in table if r["round"] != 1]
    report.update(
        status=results.get("status"),
        rounds_table=table,
        round_1_s=next((r["wall_s"] for r in table if r["round"] == 1), None),
        round_s_after_first=statistics.median(later) if later else None,
        **{k: v for k, v in overhead_from_results(results).items() if k.startswith("flare_")},
    )
    report["wall_s"] = time.perf_counter() - begin
    report["load_average_end"] = load_average()
    atomic_write_json(out / f"paper-scale-{sites}.json", report)
    mark([f"paper-scale-{sites}.json"])
    return report


def _repeats_at_a_site(parts: dict[str, dict[str, list]]) -> int:
    """The most times one site holds the same image in one split of a manifest's "sites" (1: never twice)."""
    counts = [Counter(rel for rel, _ in part[split]) for part in parts.values() for split in part]
    return max((max(c.values()) for c in counts if c), default=1)


def _device(gpu: str | None) -> str:
    if gpu is None:
        import torch

        return device_name(torch.device("cpu"))
    return f"GPU(s) {gpu} (simulator -gpu)"


def _prepare(spec) -> dict[str, Any]:
    args = json.dumps({"job_config": str(spec.settings_file), "overrides": spec.job_overrides})
    code = f"from fedrsclip.tools.bench.paper import prepare_child; prepare_child({args!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"filling the feature caches failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _simulate(cmd: list[str], log_path: Path, interval: float) -> dict[str, Any]:
    from .memwatch import MemoryWatch

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        watch = MemoryWatch(proc.pid, interval).start()
        try:
            rc = proc.wait()
        finally:
            memory = watch.stop()
    return {
        "simulator_exit_code": rc,
        "job_wall_s": time.perf_counter() - start,
        "memory": memory,
        "log": str(log_path),
    }


def format_paper(r: dict) -> str:
    mem = r["memory"]
    lines = [
        f"paper scale: {r['sites']} sites x {r['rounds']} rounds, {r['threads']} simulator threads, {r['model']}",
        f"data: {r['data']['note']}; train/test per site {r['data']['train_per_site']}/{r['data']['test_per_site']}",
        f"device: {r['device']}; status {r.get('status')}, simulator exit {r['simulator_exit_code']}",
    ]
    if r.get("prepare"):
        lines.append(
            f"feature caches filled beforehand: {r['prepare']['distinct_images']} distinct images, "
            f"{r['prepare']['seconds']:.0f} s, peak RSS {r['prepare']['peak_rss_mb']:.0f} MB"
        )
    for row in r["rounds_table"]:
        lines.append(
            f"  round {row['round']:>2}: {row['wall_s']:7.1f} s  (slowest site "
            f"{row['slowest_site_s'] or 0:.1f} s, {row['sites_reported']} sites reported, "
            f"{row['sites_missing']} missing)"
        )
    after, share = r.get("round_s_after_first"), r.get("flare_overhead_fraction")
    after_text = "n/a" if after is None else f"{after:.1f} s"
    share_text = "n/a" if share is None else f"{share:.1%}"
    if r["simulator_exit_code"] != 0:
        error = r.get("simulator_error") or "no error line in it"
        lines.append(f"the simulator failed (exit {r['simulator_exit_code']}): {error}; full log: {r['log']}")
    lines.append(
        f"job wall time {r['job_wall_s']:.0f} s; per round after round 1: {after_text}; FLARE's share {share_text}"
    )
    if not mem["site_processes_at_once_max"]:  # no site process started: no memory figures to show
        return "\n".join(lines)
    lines += [
        f"memory: machine {mem['machine_used_mb_peak']:,.0f} MB used at peak "
        f"({mem['machine_used_mb_before']:,.0f} before the run, other programs included); the run's processes "
        f"{mem['run_pss_mb_peak']:,.0f} MB PSS ({mem['run_rss_mb_peak']:,.0f} MB RSS); per site process at most "
        f"{mem['site_peak_vmhwm_mb_max'] or 0:,.0f} MB RSS (VmHWM), {mem['site_peak_pss_mb_max'] or 0:,.0f} MB "
        "PSS; up to "
        f"{mem['site_processes_at_once_max']} site processes at once",
    ]
    return "\n".join(lines)


def paper_scale_command(
    sites: int,
    out_dir: str | None,
    threads: int | None,
    rounds: int,
    images: str,
    cold: bool,
    gpu: str | None,
    overrides: Sequence[str],
) -> int:
    """`fedrsclip bench --paper-scale N`: run, print the summary and, as the last line, the JSON. Exit code 2 with
    a message (and nothing written) for bad options, inputs or output folder; 1 when the run did not finish."""
    out = out_dir or f"workspaces/paper-scale-{sites}"
    try:
        report = run_paper_scale(
            sites, out, threads=threads, rounds=rounds, images=images, cold=cold, gpu=gpu, overrides=overrides
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_paper(report), flush=True)
    print(f"written: {Path(out) / f'paper-scale-{sites}.json'}", flush=True)
    print(to_json(report, indent=None), flush=True)
    return 0 if report["simulator_exit_code"] == 0 and report.get("status") == "finished" else 1

"""A site's start and memory as a FLARE task sees them (issue 14): a fresh process per measurement.

Each child process starts as a simulator worker's task does: Python, torch and nvflare's executor module imported,
the site's settings resolved (`fedrsclip.flare.settings.resolve_site_settings`: the job's YAML, its overrides, the
site's workspace), the site built (`factory.make_site`), then one round (`Site.run_round`: evaluate the received
model, train). Measured from the parent's clock just before the process is started:

* task start: process start to the end of the first training step;
* peak resident memory (VmHWM, Linux) after the site is built (a cold start: the whole CLIP loaded, the features
  extracted, the image tower freed, the text tower file written) and at the end of the round.

Cold: an empty cache folder; warm: the same folder again (the text tower file and the feature caches in place), as
every task after a site's first one in `nvflare simulator -t 1`. Models: the offline demo's (`fedrsclip-tiny`,
random weights, its synthetic scenes) and ViT-B/16 with RANDOM weights read from a local checkpoint file
(`write_random_checkpoint`; timing and memory do not depend on the weights) on the UC Merced images given.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .common import progress

VITB16 = "ViT-B-16"


def write_random_checkpoint(path: str | Path, arch: str = VITB16, seed: int = 0) -> Path:
    """A checkpoint file (torch state_dict) of `arch` with open_clip's random initialisation under `seed`: a local
    file read as real weights are (`fedrsclip.checkpoints`), without a download. Kept when it exists."""
    path = Path(path)
    if path.is_file():
        return path
    import open_clip
    import torch

    from ...atomic import atomic_torch_save
    from ...backbone import _register_package_configs

    _register_package_configs()  # fedrsclip-tiny, for tests
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    return atomic_torch_save(path, model.state_dict())


def vitb16_overrides(
    checkpoint: str | Path, manifest: str | Path, cache_dir: str | Path, arch: str = VITB16
) -> list[str]:
    """Job settings of a ViT-B/16 site (random weights from `checkpoint`, GELU as open_clip initialises it) on a
    partition manifest, with the package's training defaults (the paper's: batch 32, one local epoch, lr 0.001).
    arch: another open_clip model the checkpoint holds (tests: fedrsclip-tiny)."""
    from ...config import TrainConfig

    train = TrainConfig()
    return [
        f"model.arch={arch}",
        f"model.pretrained={Path(checkpoint).resolve()}",
        "model.random_init=false",
        "model.quick_gelu=false",
        "data.source=manifest",
        f"data.manifest={Path(manifest).resolve()}",
        f"data.cache_dir={Path(cache_dir).resolve()}",
        f"train.local_epochs={train.local_epochs}",
        f"train.batch_size={train.batch_size}",
        f"train.lr={train.lr}",
    ]


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def site_child(spec: str) -> None:
    """In a fresh process: start one site as a FLARE task does and run one round; print one JSON line."""
    t0 = json.loads(spec)["t0"]
    started = time.time()
    import torch

    import fedrsclip.flare.executor  # noqa: F401  (a FLARE site process has it loaded)

    args = json.loads(spec)
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    from ...factory import make_site
    from ...flare.settings import resolve_site_settings

    imported = time.time()
    workspace = Path(args["workspace"])
    settings = resolve_site_settings(
        args["site"], args["job_config"], args["overrides"], workspace, workspace / "local"
    )
    site = make_site(settings.cfg, args["site"], settings.manifest, progress=False)
    built = time.time()
    built_peak, built_rss = _status_mb("VmHWM"), _status_mb("VmRSS")
    steps: list[float] = []

    def step_clock() -> bool:  # called before every training step
        steps.append(time.time())
        return False

    update = site.run_round(None, 0, should_abort=step_clock)
    done = time.time()
    first_step = steps[1] if len(steps) > 1 else done
    print(
        json.dumps(
            {
                "python_start_s": started - t0,
                "imports_s": imported - t0,
                "site_built_s": built - t0,
                "task_start_s": first_step - t0,
                "round_s": done - built,
                "steps": len(steps),
                "evaluate_s": update.record.timings.get("evaluate"),
                "train_s": update.record.timings.get("train"),
                "peak_rss_mb_built": built_peak,
                "rss_mb_built": built_rss,
                "peak_rss_mb": _status_mb("VmHWM"),
                "rss_anon_mb_end": _status_mb("RssAnon"),
                "rss_file_mb_end": _status_mb("RssFile"),
                "image_tower_loaded": site.backbone.has_image_tower,
                "open_clip_imported": "open_clip" in sys.modules,
                "backbone": site.backbone.description,
                "train_images": len(site.train_set),
                "test_images": len(site.test_set) if site.test_set is not None else 0,
            }
        )
    )


def run_site_child(
    job_config: str | Path, overrides: Sequence[str], workspace: Path, threads: int | None = None, site: str = "site-1"
) -> dict[str, Any]:
    """One fresh site process (`site_child`); its figures, or RuntimeError with the end of its stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    spec = json.dumps(
        {
            "t0": t0,
            "job_config": str(job_config),
            "overrides": list(overrides),
            "workspace": str(workspace),
            "site": site,
            "threads": threads,
        }
    )
    code = f"from fedrsclip.tools.bench.sitestart import site_child; site_child({spec!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the site process failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_starts(
    label: str,
    job_config: str | Path,
    overrides: Sequence[str],
    workspace: Path,
    warm_repeats: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """A cold start on an empty cache, then `warm_repeats` warm ones (median); their figures."""
    progress(f"site start: {label}, cold (empty cache)")
    cold = run_site_child(job_config, overrides, workspace, threads)
    warm = []
    for r in range(warm_repeats):
        warm.append(run_site_child(job_config, overrides, workspace, threads))
        progress(
            f"site start: {label}, warm {r + 1}/{warm_repeats}: first training step after "
            f"{warm[-1]['task_start_s']:.2f} s, peak RSS {warm[-1]['peak_rss_mb']:.0f} MB"
        )
    if any(w["image_tower_loaded"] or w["open_clip_imported"] for w in warm):
        raise RuntimeError(f"{label}: a warm start loaded the image tower or imported open_clip")
    median = {
        key: statistics.median(w[key] for w in warm)
        for key in (
            "task_start_s",
            "python_start_s",
            "imports_s",
            "site_built_s",
            "round_s",
            "peak_rss_mb",
            "rss_anon_mb_end",
            "rss_file_mb_end",
        )
    }
    return {"cold": cold, "warm": warm, "warm_median": median}


def bench_site_start(
    workdir: Path,
    images: Sequence[tuple[Path, int]],
    classes: Sequence[str],
    per_split: int,
    warm_repeats: int,
    dataset: str = "ucmerced",
) -> dict[str, Any]:
    """task_start_s_demo, task_start_s_vitb16, site_peak_rss_mb_extract_vitb16, site_peak_rss_mb_train_vitb16.

    images: labelled image files (the UC Merced sample when present) named by `classes`; the first `per_split` are
    the ViT-B/16 site's training split, the next `per_split` its test split. The sites run with the job's settings
    (`fedrsclip.flare.job.JobSpec`: its torch threads per site process too).
    """
    from ...flare.job import JobSpec

    out: dict[str, Any] = {}
    demo_job = JobSpec()
    demo = measure_starts(
        "demo model (fedrsclip-tiny, synthetic scenes)",
        demo_job.settings_file,
        demo_job.job_overrides,
        workdir / "demo-site",
        warm_repeats,
        demo_job.torch_threads,
    )
    checkpoint = write_random_checkpoint(workdir / "vitb16-random.pt")
    manifest = one_site_manifest(images, classes, per_split, workdir / "vitb16-manifest.json", dataset)
    vitb_job = JobSpec(overrides=tuple(vitb16_overrides(checkpoint, manifest, workdir / "vitb16-cache")))
    vitb = measure_starts(
        f"ViT-B/16 (random weights from a local file), {per_split} + {per_split} images",
        vitb_job.settings_file,
        vitb_job.job_overrides,
        workdir / "vitb16-site",
        warm_repeats,
        vitb_job.torch_threads,
    )
    out.update(
        task_start_s_demo=demo["warm_median"]["task_start_s"],
        task_start_s_vitb16=vitb["warm_median"]["task_start_s"],
        site_peak_rss_mb_extract_vitb16=vitb["cold"]["peak_rss_mb_built"],
        site_peak_rss_mb_train_vitb16=vitb["warm_median"]["peak_rss_mb"],
        site_start={
            "demo": demo,
            "vitb16": vitb,
            "how": (
                "fresh processes (torch, nvflare's executor, the site's settings resolved as a FLARE task "
                f"does, make_site, one run_round; {demo_job.torch_threads} torch thread(s), the job's): "
                "task_start = process start to the end of the first training "
                f"step, median of {warm_repeats} warm start(s); extract = VmHWM of the cold start once the site "
                "is built (whole CLIP loaded, features extracted, image tower freed); train = VmHWM of a warm "
                "start at the end of its round (evaluate + train)"
            ),
        },
    )
    return out


def one_site_manifest(
    images: Sequence[tuple[Path, int]], classes: Sequence[str], per_split: int, path: Path, dataset: str = "ucmerced"
) -> Path:
    """A one-site manifest: the first `per_split` items train, the next `per_split` test."""
    from ...data.manifest import MANIFEST_VERSION, write_manifest

    if len(images) < 2 * per_split:
        raise ValueError(f"{2 * per_split} images needed for the ViT-B/16 site, {len(images)} given")
    chosen = images[: 2 * per_split]
    root = Path(os.path.commonpath([str(Path(p).resolve().parent.parent) for p, _ in chosen]))
    records = [[Path(p).resolve().relative_to(root).as_posix(), int(label)] for p, label in chosen]
    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "root": str(root),
        "classes": list(classes),
        "seed": 0,
        "scheme": "bench",
        "train_fraction": 0.5,
        "sites": {"site-1": {"train": records[:per_split], "test": records[per_split:]}},
        "skipped": [],
    }
    return write_manifest(manifest, path)

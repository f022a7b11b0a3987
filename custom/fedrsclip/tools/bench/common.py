"""What the benchmark's parts share: the settings of a full and a quick run, the inputs (real images when given,
else synthetic scenes), timing with CUDA synchronised, the machine's load, and progress lines on stderr."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ARCH = "ViT-B-16"
BATCH = 32
# The real UC Merced sample where the development machines keep it (relative to the repository root);
# `fedrsclip bench --images DIR` names another folder in the UC Merced layout.
DEFAULT_IMAGES = Path("..") / "shared" / "data" / "ucmerced-sample"

# The 21 UC Merced and 45 NWPU-RESISC45 scene classes (readable names, as the prompts use them).
UCMERCED_CLASSES = [
    "agricultural",
    "airplane",
    "baseball diamond",
    "beach",
    "buildings",
    "chaparral",
    "dense residential",
    "forest",
    "freeway",
    "golf course",
    "harbor",
    "intersection",
    "medium residential",
    "mobile home park",
    "overpass",
    "parking lot",
    "river",
    "runway",
    "sparse residential",
    "storage tanks",
    "tennis court",
]
NWPU_CLASSES = [
    "airplane",
    "airport",
    "baseball diamond",
    "basketball court",
    "beach",
    "bridge",
    "chaparral",
    "church",
    "circular farmland",
    "cloud",
    "commercial area",
    "dense residential",
    "desert",
    "forest",
    "freeway",
    "golf course",
    "ground track field",
    "harbor",
    "industrial area",
    "intersection",
    "island",
    "lake",
    "meadow",
    "medium residential",
    "mobile home park",
    "mountain",
    "overpass",
    "palace",
    "parking lot",
    "railway",
    "railway station",
    "rectangular farmland",
    "river",
    "roundabout",
    "runway",
    "sea ice",
    "ship",
    "snowberg",
    "sparse residential",
    "stadium",
    "storage tank",
    "tennis court",
    "terrace",
    "thermal power station",
    "wetland",
]

# name -> (JSON key, comparison, threshold, shown as)
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "step speed-up": ("step_speedup_vs_reference", ">=", 10.0, ">= 10x"),
    "feature throughput": ("feature_throughput_ratio", ">=", 0.9, ">= 0.9x raw open_clip"),
    "FLARE overhead": ("flare_overhead_fraction", "<=", 0.20, "<= 20% of round wall time"),
    "plaintext upload": ("upload_bytes_plain", "<=", 8.5 * 1024, "<= 8.5 KB (8,704 B)"),
    "CKKS upload": ("upload_bytes_ckks", "<=", 100 * 1024, "<= 100 KB (102,400 B)"),
    "peak RSS": ("peak_rss_mb", "<=", 2.5 * 1024, "<= 2.5 GB (2,560 MB)"),
    "task start ViT-B/16": ("task_start_s_vitb16", "<=", 4.0, "<= 4 s (warm cache)"),
    "site train RSS": ("site_peak_rss_mb_train_vitb16", "<=", 1100.0, "<= 1,100 MB (ViT-B/16, warm cache)"),
    "-t 1 / -t N": ("sim_demo_ratio", "<=", 2.5, "<= 2.5 (demo job, 10 sites; FLARE alone exceeds it, see README)"),
    "-t 1 / FLARE floor": ("sim_demo_t1_over_floor", "<=", 2.5, "<= 2.5 (demo job / FLARE's numpy job, -t 1)"),
}

# Settings of the full run and of --quick (fewer repeats and images; K=45 and the FLARE job skipped).
# Training steps: ref_repeats timed reference steps, each followed by proj_per_ref timed project steps; before them
# a light warm-up of the reference (its text encoder; the image encoder is warm from the feature part), ref_warmup
# full reference steps and proj_warmup project steps.
# Site starts (`sitestart`): start_images train + start_images test images at the ViT-B/16 site, start_repeats warm
# starts; the demo job at sim_sites sites with -t 1 and -t sim_sites (`simthreads`; with the FLARE part).
FULL = dict(
    feature_images=64,
    feature_images_cuda=210,
    feature_repeats=3,
    ref_warmup=0,
    ref_repeats=4,
    proj_warmup=2,
    proj_per_ref=3,
    class_counts=(21, 45),
    rss_images=48,
    rss_epochs=2,
    flare=True,
    flare_sites=10,
    flare_rounds=3,
    site_images=105,
    site_rounds=2,
    start_images=105,
    start_repeats=3,
    sim_sites=10,
)
QUICK = dict(
    feature_images=32,
    feature_images_cuda=64,
    feature_repeats=1,
    ref_warmup=0,
    ref_repeats=1,
    proj_warmup=1,
    proj_per_ref=3,
    class_counts=(21,),
    rss_images=12,
    rss_epochs=2,
    flare=False,
    flare_sites=2,
    flare_rounds=2,
    site_images=32,
    site_rounds=1,
    start_images=8,
    start_repeats=1,
    sim_sites=2,
)


_CLOCK = {"start": time.perf_counter()}


def reset_clock() -> float:
    _CLOCK["start"] = time.perf_counter()
    return _CLOCK["start"]


def is_bench_output(path: Path) -> bool:
    """Whether `path` is a JSON file `fedrsclip bench` wrote (its figures): one it may write again."""
    try:
        return "step_speedup_vs_reference" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


def progress(message: str) -> None:
    print(f"[bench {time.perf_counter() - _CLOCK['start']:4.0f}s] {message}", file=sys.stderr, flush=True)


class _OpenClipChatter(logging.Filter):
    """Drops open_clip's own notices, which it logs on the root logger (`logging.info("Loaded ViT-B-16 model
    config.")`, `logging.warning("No pretrained weights loaded ...")`): the bench says itself that its weights are
    random. Errors, and every other logger's records, pass."""

    def __init__(self) -> None:
        super().__init__()
        spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
        self.folders = (
            tuple(str(Path(f).resolve()) + os.sep for f in (spec.submodule_search_locations or [])) if spec else ()
        )

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "root" and record.levelno < logging.ERROR
        return not (ours and str(Path(record.pathname).resolve()).startswith(self.folders))


@contextlib.contextmanager
def quiet_open_clip() -> Iterator[None]:
    """While the bench runs (its command only: library users' logging is left as it is), open_clip's root-logger
    notices are not printed (`_OpenClipChatter`); the filter is removed afterwards."""
    chatter = _OpenClipChatter()
    logging.root.addFilter(chatter)  # a logger's own filter sees only the records logged on it: open_clip's
    try:
        yield
    finally:
        logging.root.removeFilter(chatter)


# ---- timing helpers -------------------------------------------------------------------------------------------------
def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages: timings taken while other work ran are noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (CPU)"


# ---- inputs ---------------------------------------------------------------------------------------------------------
def bench_images(count: int, workdir: Path, real: Path | None = DEFAULT_IMAGES) -> tuple[list[tuple[Path, int]], dict]:
    """`count` image files with labels: the UC Merced images in `real` when present, else synthetic 224 px scenes."""
    if real is not None and Path(real).is_dir():
        from ...data.readers import list_dataset

        listing = list_dataset("ucmerced", real, verify=False, progress=False)
        # Round-robin over the classes, so a small selection still covers them all.
        by_class: dict[int, list[Path]] = {}
        for rel, label in listing.records:
            by_class.setdefault(label, []).append(listing.root / rel)
        items: list[tuple[Path, int]] = []
        depth = 0
        while len(items) < count and any(depth < len(v) for v in by_class.values()):
            for label in sorted(by_class):
                if depth < len(by_class[label]) and len(items) < count:
                    items.append((by_class[label][depth], label))
            depth += 1
        info = {
            "source": "ucmerced-sample (real images)",
            "path": str(real),
            "available": len(listing.records),
            "classes": len(listing.classes),
            "class_names": list(listing.classes),
            "dataset": "ucmerced",
        }
        return items, info
    from ...data.synth import MAX_CLASSES, make_synthetic

    classes = min(MAX_CLASSES, 21)
    per_class = max(1, math.ceil(count / classes))
    root = make_synthetic(workdir / "synthetic", classes=classes, per_class=per_class, size=224, seed=0, progress=False)
    files = sorted(p for p in root.rglob("*.png"))
    names = sorted({p.parent.name for p in files})
    items = [(p, names.index(p.parent.name)) for p in files]
    items = sorted(items, key=lambda it: (int(it[0].stem.rsplit("_", 1)[1]), it[1]))[:count]
    info = {
        "source": f"synthetic 224 px scenes (no real images at {real})",
        "path": str(root),
        "available": len(files),
        "classes": classes,
        "class_names": names,
        "dataset": "synthetic",
    }
    return items, info


def bench_config(device: str, algorithm: str = "fedrsclip", arch: str = ARCH, extra: Sequence[str] = ()):
    from ...config import load_config

    return load_config(
        overrides=[
            f"model.arch={arch}",
            "model.pretrained=null",
            "model.random_init=true",
            f"model.device={device}",
            f"algorithm={algorithm}",
            *extra,
        ]
    )

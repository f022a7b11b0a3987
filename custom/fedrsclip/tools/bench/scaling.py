"""`fedrsclip bench --scaling`: how a round's time grows with the classes, the images per site and the sites.

* classes and images per site: one site's round as the FLARE task does it (evaluate the received model on the test
  split, then the local epochs: `PromptTrainer.evaluate` + `train_round`), in this process, on the bench model
  (ViT-B/16 with random weights by default). The image features are those of real images (the UC Merced sample
  when present) repeated to the wanted count, so the OT solver sees real feature statistics.
* sites: the FLARE job (its own small demo model) in the simulator with 2 to 40 sites, one process per site when
  memory allows; per round the wall time, the slowest site's task seconds and FLARE's share (the rest).

Round 1 of a simulator run starts every site process (model load, data, features), so the site figures use the
later rounds. On one machine the sites share its cores: the slowest site's seconds then grow with the number of
sites, which a deployment (one machine per site) does not see; FLARE's own seconds are what the server adds.
Writes `scaling.json` and `scaling.png` to the output folder.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ...atomic import atomic_write, atomic_write_json, to_json
from .common import NWPU_CLASSES, UCMERCED_CLASSES, bench_config, bench_images, device_name, load_average, progress
from .overhead import bench_flare_overhead

# Defaults of the full study (about 10 minutes on 2 CPU cores when the machine is otherwise idle). Images per site:
# Table I's UC Merced training counts at 40, 10 and 2 sites; NWPU-RESISC45 at 10 sites has 630.
SCALING = dict(
    classes=(21, 31, 45),
    class_images=105,
    images=(26, 105, 525),
    image_classes=21,
    rounds=1,
    sites=(2, 5, 10, 20, 40),
    site_rounds=2,
)
SITE_PROCESS_MB = 500  # resident memory of one simulated demo site process (measured: ~4.1 GB for 8 + the server)


def tile_features(features, count: int, num_classes: int):
    """`count` items cycled from `features` (real image features), labelled round-robin over `num_classes`."""
    import torch

    from ...features import FeatureSet

    index = torch.arange(count) % len(features)
    return FeatureSet(
        features.global_feats[index],
        features.tokens[index],
        torch.arange(count) % num_classes,
        [features.paths[i] for i in index.tolist()],
    )


def class_names(num_classes: int) -> list[str]:
    if num_classes == 21:
        return list(UCMERCED_CLASSES)
    if num_classes <= len(NWPU_CLASSES):
        return list(NWPU_CLASSES[:num_classes])
    return [f"class {i}" for i in range(num_classes)]


def time_site_round(
    backbone,
    features,
    num_classes: int,
    train_images: int,
    test_images: int | None = None,
    rounds: int = 2,
    arch: str = "ViT-B-16",
    warmup: bool = True,
) -> dict[str, Any]:
    """Seconds of one site's round (evaluate the test split + the local epochs), median of `rounds` after a warm-up
    round (none with warmup=False), with the package's default training settings (batch 32, one local epoch)."""
    from ...trainer import PromptTrainer

    cfg = bench_config(str(backbone.device), arch=arch)  # the backbone's own architecture
    train = tile_features(features, train_images, num_classes)
    test = tile_features(features, train_images if test_images is None else test_images, num_classes)
    trainer = PromptTrainer(cfg, backbone, class_names(num_classes), site="site-1")
    totals, evals, trains, steps = [], [], [], 0
    first = 1 if warmup else 0
    for rnd in range(rounds + first):
        start = time.perf_counter()
        trainer.evaluate(test)
        middle = time.perf_counter()
        result = trainer.train_round(train, rnd)
        end = time.perf_counter()
        steps = int(result.metrics["steps"])
        if rnd >= first:
            totals.append(end - start)
            evals.append(middle - start)
            trains.append(end - middle)
    return {
        "classes": num_classes,
        "train_images": train_images,
        "test_images": len(test),
        "steps": steps,
        "round_s": statistics.median(totals),
        "evaluate_s": statistics.median(evals),
        "train_s": statistics.median(trains),
        "rounds_timed": rounds,
    }


def _available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def site_threads(sites: int, available_mb: float | None) -> int:
    """Simulator threads for `sites`: one process per site when memory allows, else as many as fit (fewer threads
    than sites make the simulator start a fresh process for every task, which is much slower)."""
    if available_mb is None:
        return sites
    fit = int(0.8 * available_mb // SITE_PROCESS_MB) - 1  # the server process as well
    return max(1, min(sites, fit))


def site_sweep(counts: Sequence[int], rounds: int, workdir: Path) -> list[dict]:
    out = []
    for sites in counts:
        threads = site_threads(sites, _available_mb())
        progress(f"scaling: {sites} sites, {rounds} rounds, {threads} simulator threads")
        figures = bench_flare_overhead(sites, rounds, workdir / f"sites-{sites}", threads=threads)
        out.append(
            {
                "sites": sites,
                "threads": threads,
                **{
                    k: figures.get(k)
                    for k in (
                        "flare_round_wall_s",
                        "flare_site_seconds_max",
                        "flare_overhead_s_per_round",
                        "flare_overhead_fraction",
                        "flare_job_wall_s",
                        "flare_exit_code",
                        "flare_overhead_note",
                    )
                },
            }
        )
    return out


def run_scaling(
    out_dir: str | Path,
    device: str = "auto",
    settings: dict | None = None,
    arch: str = "ViT-B-16",
    feature_images: int = 32,
) -> dict[str, Any]:
    """Measure the three sweeps (see the module doc) and write scaling.json and scaling.png under `out_dir`."""
    from ...backbone import load_backbone
    from ...features import extract_features

    s = {**SCALING, **(settings or {})}
    out_dir = Path(out_dir)
    check_scaling_out(out_dir)  # before the study, which takes minutes
    out_dir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedrsclip-scaling-") as tmp:
        workdir = Path(tmp)
        items, info = bench_images(feature_images, workdir)
        backbone = load_backbone(bench_config(device, arch=arch).model)
        results: dict[str, Any] = {
            "device": device_name(backbone.device),
            "arch": f"{arch} (random weights)",
            "torch_threads": _torch_threads(),
            "images": info,
            "settings": s,
            "load_average_start": load_average(),
        }
        progress(f"scaling: features of {len(items)} images ({info['source']}) with {arch}")
        features = extract_features(backbone, items, progress=False)
        results["classes"] = []
        for k in s["classes"]:
            progress(f"scaling: one site's round, K={k}, {s['class_images']} images")
            results["classes"].append(
                time_site_round(backbone, features, k, s["class_images"], rounds=s["rounds"], arch=arch)
            )
        results["images"] = []
        for n in s["images"]:
            progress(f"scaling: one site's round, K={s['image_classes']}, {n} images")
            results["images"].append(
                time_site_round(backbone, features, s["image_classes"], n, rounds=s["rounds"], arch=arch)
            )
        del backbone, features
        results["sites"] = site_sweep(s["sites"], s["site_rounds"], workdir) if s["sites"] else []
    results["wall_s"] = time.perf_counter() - begin
    results["load_average_end"] = load_average()
    atomic_write_json(out_dir / "scaling.json", results)
    plot_scaling(results, out_dir / "scaling.png")
    return results


def check_scaling_out(out_dir: Path) -> None:
    """`out_dir` may be new or hold an earlier study (its scaling.json and scaling.png are then replaced); a
    scaling.json or scaling.png that is not a study's is refused (ValueError): never overwritten by name."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file, not a folder: choose another --out-dir (nothing was written)")
    data, figure = out_dir / "scaling.json", out_dir / "scaling.png"
    try:
        ours = isinstance(earlier := json.loads(data.read_text()), dict) and {"classes", "images", "wall_s"} <= set(
            earlier
        )
    except (OSError, ValueError):
        ours = False
    if (data.exists() or figure.exists()) and not ours:
        raise ValueError(
            f"--out-dir {out_dir} holds a {data.name if data.exists() else figure.name} that is not an "
            "earlier scaling study's: choose another --out-dir (nothing was written)"
        )


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def plot_scaling(results: dict, path: str | Path) -> Path:
    """Three panels: round seconds vs classes, vs images per site (one site), and vs sites (simulator)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, x, label in (
        (axes[0], "classes", "classes", "classes K"),
        (axes[1], "images", "train_images", "training images per site"),
    ):
        rows = results.get(key) or []
        ax.plot([r[x] for r in rows], [r["round_s"] for r in rows], "o-", label="round (evaluate + train)")
        ax.plot([r[x] for r in rows], [r["train_s"] for r in rows], "s--", label="local training")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    ax = axes[2]
    rows = [r for r in results.get("sites") or [] if r.get("flare_round_wall_s") is not None]
    ax.plot([r["sites"] for r in rows], [r["flare_round_wall_s"] for r in rows], "o-", label="round wall")
    ax.plot([r["sites"] for r in rows], [r["flare_site_seconds_max"] for r in rows], "s--", label="slowest site")
    ax.plot([r["sites"] for r in rows], [r["flare_overhead_s_per_round"] for r in rows], "^:", label="FLARE")
    ax.set_xlabel("sites (simulator, one machine)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    fig.suptitle(f"fedrsclip round time: {results.get('arch')} on {results.get('device')}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


def format_scaling(results: dict) -> str:
    lines = [
        f"fedrsclip bench --scaling: {results['arch']} on {results['device']}",
        "",
        "one site's round (evaluate + train, batch 32, 1 local epoch):",
    ]
    for row in results["classes"] + results["images"]:
        lines.append(
            f"  K={row['classes']:>3}  {row['train_images']:>4} images  {row['steps']:>3} steps  "
            f"round {row['round_s']:7.2f} s  (train {row['train_s']:.2f} s, evaluate "
            f"{row['evaluate_s']:.2f} s)"
        )
    if results["sites"]:
        lines += ["", "FLARE simulator, the job's demo model (rounds after the first):"]
        for row in results["sites"]:
            wall = row.get("flare_round_wall_s")
            lines.append(
                f"  {row['sites']:>3} sites ({row['threads']} threads)  "
                + (
                    f"round {wall:6.2f} s, slowest site {row['flare_site_seconds_max']:.2f} s, FLARE "
                    f"{row['flare_overhead_s_per_round']:.2f} s"
                    if wall is not None
                    else f"n/a: {row.get('flare_overhead_note')}"
                )
            )
    lines.append(f"\nwall time {results['wall_s']:.0f} s")
    return "\n".join(lines)


def scaling_command(out_dir: str, device: str, quick: bool = False) -> int:
    """`fedrsclip bench --scaling`: the study, its table, and as the last line its JSON."""
    settings = None
    if quick:  # the smallest sweep that exercises every part (a smoke test, not figures to quote)
        settings = dict(classes=(21, 45), class_images=32, images=(32, 64), rounds=1, sites=(2,), site_rounds=2)
    results = run_scaling(out_dir, device=device, settings=settings)
    print(format_scaling(results), flush=True)
    print(f"written: {Path(out_dir) / 'scaling.json'}, {Path(out_dir) / 'scaling.png'}", flush=True)
    print(to_json(results, indent=None), flush=True)
    return 0

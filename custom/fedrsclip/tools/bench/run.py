"""`fedrsclip bench`: the performance figures of issue 5, measured in one run on the same inputs.

What it measures (ViT-B/16 with RANDOM weights: timing and sizes do not depend on the weights, and nothing is
downloaded):

* local training step (batch 32, algorithm fedrsclip: dual prompts + OT + DPAC, one SGD step), the project's path
  (cached image features + the text encoder cut after the last EOT token) against the straightforward reference
  (the image encoder run on the 32 preprocessed images every step, and the full 77-token text encoder as stock
  open_clip runs it: token embeddings with the context spliced in, positional embedding, the transformer with the
  full causal mask, ln_final, EOT gather, projection), for K=21 and K=45 classes; both paths must give the same
  loss (same prompts, same features);
* feature extraction images/s (`features.extract_features`) against raw open_clip `model.encode_image`, both
  decoding and preprocessing the same image files the same way;
* the bytes a site uploads per round: plaintext (the 2,048 float32 values, and FLARE's serialized DXO), CKKS
  (TenSEAL vector, without the context), and the full-model baseline (timm ViT-Tiny, 21 classes);
* the peak resident memory of one site process (ViT-B/16 on CPU: load, extract features, train a few steps);
* a site's start as a FLARE task starts it, in fresh processes (`sitestart`): process start to the first training
  step with a warm cache, for the demo model and ViT-B/16 (random weights from a local checkpoint file), and the
  peak RSS of a ViT-B/16 site extracting (cold) and training (warm);
* the share of a 10-site FLARE simulator round not spent in local training, and the demo job with `-t 1` against
  `-t 10` (`simthreads`).

Timing: warm-up iterations, then the median of repeats (time.perf_counter; CUDA synchronised). The two paths of a
comparison are timed alternately so that a load change on the machine hits both; the machine's load average is
recorded, since other work on a small CPU machine makes timings noisy. On CUDA the image encoder runs in mixed
precision (Backbone.encode_images autocasts; raw open_clip is given the same autocast), OT stays fp32.
`--quick` is a reduced run (fewer images and repeats, K=21 only, no FLARE job: under two minutes on 2 CPU
cores) that still emits every key. Progress goes to stderr; stdout gets the table, and its last line is one JSON
object with every figure (null where a part was skipped, with a note saying why).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ...atomic import atomic_write_text, to_json
from .common import (
    ARCH,
    BATCH,
    DEFAULT_IMAGES,
    FULL,
    QUICK,
    TARGETS,
    bench_config,
    bench_images,
    device_name,
    load_average,
    progress,
    reset_clock,
)
from .features import bench_features
from .memory import bench_peak_rss
from .overhead import bench_flare_overhead, realistic_overhead
from .scaling import time_site_round
from .simthreads import bench_sim_threads
from .sitestart import bench_site_start
from .step import bench_step
from .upload import ckks_upload, full_model_upload, plaintext_upload


def target_rows(results: dict) -> dict:
    """Each of TARGETS with its value and verdict (None: not measured). A value that is only a lower bound (its
    `<key>_bound` says so) misses a `<=` target when it exceeds it, and gives no verdict when it does not."""
    rows = {}
    for name, (key, op, limit, shown) in TARGETS.items():
        value, bound = results.get(key), results.get(f"{key}_bound")
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        if bound and ok == (op == "<="):  # a lower bound settles only a miss of "<=" or a pass of ">="
            ok = None
        rows[name] = {"key": key, "value": value, "target": shown, "pass": ok, "note": bound}
    return rows


def run_bench(
    quick: bool = False,
    device: str = "auto",
    out: str | None = None,
    threads: int | None = None,
    flare: bool | None = None,
    flare_arch: str | None = None,
    images: str | Path | None = DEFAULT_IMAGES,
) -> dict:
    """Measure everything (see the module doc) and return the figures; `out`: also write them there as JSON.

    quick: the reduced run (under two minutes on 2 CPU cores). threads: torch.set_num_threads (default: torch's).
    flare: run the FLARE simulator job (default: in the full run only). flare_arch: the model its sites load
    (random weights; default: the job's own, the offline demo's small CLIP). images: a folder of UC Merced images
    (default: ../shared/data/ucmerced-sample from the repository root; synthetic scenes where there is none).
    """
    import torch

    from ...backbone import load_backbone, resolve_device

    settings = dict(QUICK if quick else FULL)
    if flare is not None:
        settings["flare"] = flare
    if threads:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    begin = reset_clock()
    dev = resolve_device(device)
    results: dict[str, Any] = {
        "quick": quick,
        "device": device_name(dev),
        "device_type": dev.type,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "arch": f"{ARCH} (random weights)",
        "load_average_start": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="fedrsclip-bench-") as tmp:
        workdir = Path(tmp)
        if dev.type == "cuda":
            settings["feature_images"] = settings["feature_images_cuda"]
        items, info = bench_images(
            max(settings["feature_images"], BATCH, settings["rss_images"], 2 * settings["start_images"]),
            workdir,
            Path(images) if images else None,
        )
        feature_items = items[: settings["feature_images"]]
        info["used_features"] = len(feature_items)
        info["used_step_batch"] = BATCH
        results["images"] = info
        progress(f"images: {info['source']}; device {results['device']}, {results['torch_threads']} torch threads")

        # First, while this process holds no model (Linux counts the parent's memory at fork into the child's
        # ru_maxrss).
        results.update(bench_peak_rss(items[: settings["rss_images"]], settings["rss_epochs"], threads))
        results.update(
            bench_site_start(
                workdir / "site-start",
                items,
                info["class_names"],
                settings["start_images"],
                settings["start_repeats"],
                dataset=info["dataset"],
            )
        )

        progress(f"loading {ARCH} with random weights")
        backbone = load_backbone(bench_config(device).model)
        results["feature_extraction"] = (
            "features.extract_features vs open_clip model.encode_image (both: load_rgb"
            " decode + the model's preprocess + encoder, batches of 64)"
        )
        figures, features = bench_features(backbone, feature_items, settings["feature_repeats"])
        results.update(figures)

        from ...data.images import load_rgb

        step_items = items[:BATCH]
        images = torch.stack([backbone.preprocess(load_rgb(p)) for p, _ in step_items])
        labels = torch.tensor([label for _, label in step_items])
        cache = None  # the step's cached features: those extract_features just computed, when they cover the batch
        if features.paths[:BATCH] == [str(p) for p, _ in step_items]:
            cache = (features.global_feats[:BATCH], features.tokens[:BATCH])
        steps: dict[int, dict] = {}
        payload = None
        for k in (21, 45):
            key = f"k{k}"
            if k not in settings["class_counts"]:
                results.update(
                    {
                        f"step_ms_project_{key}": None,
                        f"step_ms_reference_{key}": None,
                        f"step_speedup_{key}": None,
                        f"step_{key}_note": "skipped in --quick",
                    }
                )
                continue
            steps[k], trainer_payload = bench_step(backbone, images, labels, k, settings, cache=cache)
            payload = payload or trainer_payload
            results.update(
                {
                    f"step_ms_project_{key}": steps[k]["project_ms"],
                    f"step_ms_reference_{key}": steps[k]["reference_ms"],
                    f"step_speedup_{key}": steps[k]["speedup"],
                }
            )
        results["step_speedup_vs_reference"] = min(s["speedup"] for s in steps.values())
        for key in ("loss_max_abs_diff", "loss_abs_diff_fp16_cache", "grad_max_rel_diff"):
            results[key] = max(s[key] for s in steps.values())
        results["loss_equal"] = results["loss_max_abs_diff"] <= 1e-4
        results["step_details"] = {f"k{k}": s for k, s in steps.items()}
        results["step_method"] = (
            f"batch {BATCH}, algorithm fedrsclip (dual prompts + OT + DPAC), one SGD step; reference = image encoder "
            "on the preprocessed batch + the full 77-token text encoder every step; project = fp16 cached features "
            "+ the truncated text encoder; medians of the timed steps after warm-up, the paths interleaved (one "
            f"reference step, then {settings['proj_per_ref']} project steps); "
            "step_speedup_vs_reference = the smallest over the class counts measured; loss_max_abs_diff compares "
            "the project's code on the features the reference computed live with the reference, step by step from "
            "the same prompts; loss_abs_diff_fp16_cache: the project's first step on its fp16 cache vs the "
            "reference's"
        )

        n = settings["site_images"]
        progress(f"one site's round: K=21, {n} train + {n} test images (UC Merced at 10 sites)")
        site_round = time_site_round(
            backbone, features, 21, n, rounds=settings["site_rounds"], warmup=not quick
        )  # --quick: a single round, no warm-up
        results["site_round"] = {
            **site_round,
            "how": "PromptTrainer.evaluate (test split) + train_round (batch 32, "
            "1 local epoch), as a FLARE train task does; real image features repeated to the "
            "count",
        }
        results["site_round_s"] = site_round["round_s"]
        del backbone, features

        progress("upload sizes: plaintext DXO, CKKS, full-model baseline")
        results.update(plaintext_upload(payload))
        results.update(ckks_upload(next(iter(payload.values()))))
        results.update(full_model_upload(21))

        if settings["flare"]:
            flare_figures = bench_flare_overhead(
                settings["flare_sites"], settings["flare_rounds"], workdir, arch=flare_arch
            )
            results.update(flare_figures)
            results.update(realistic_overhead(flare_figures, results["site_round_s"]))
            results.update(bench_sim_threads(workdir / "sim-threads", settings["sim_sites"]))
        else:
            skipped = (
                "skipped in --quick (a 10-site simulator job takes minutes); run `fedrsclip bench` without --quick"
            )
            results.update(
                {
                    "flare_overhead_fraction": None,
                    "flare_overhead_note": skipped,
                    "sim_demo_t1_s": None,
                    "sim_demo_tn_s": None,
                    "sim_demo_ratio": None,
                    "sim_floor_t1_s": None,
                    "sim_floor_ratio": None,
                    "sim_demo_t1_over_floor": None,
                    "sim_demo_note": skipped,
                }
            )
    results["wall_s"] = time.perf_counter() - begin
    results["load_average_end"] = load_average()
    results["targets"] = target_rows(results)
    if out:
        atomic_write_text(out, to_json(results, indent=2) + "\n")
    return results

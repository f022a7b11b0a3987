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
* the share of a 10-site FLARE simulator round not spent in local training.

Timing: warm-up iterations, then the median of repeats (time.perf_counter; CUDA synchronised). The two paths of a
comparison are timed alternately so that a load change on the machine hits both; the machine's load average is
recorded, since other work on a small CPU machine makes timings noisy. On CUDA the image encoder runs in mixed
precision (Backbone.encode_images autocasts; raw open_clip is given the same autocast), OT stays fp32.
`--quick` is a reduced run (fewer images and repeats, K=21 only, no FLARE job: under two minutes on 2 CPU
cores) that still emits every key. Progress goes to stderr; stdout gets the table, and its last line is one JSON
object with every figure (null where a part was skipped, with a note saying why).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ARCH = "ViT-B-16"
BATCH = 32
REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ucmerced-sample"

# The 21 UC Merced and 45 NWPU-RESISC45 scene classes (readable names, as the prompts use them).
UCMERCED_CLASSES = [
    "agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral", "dense residential",
    "forest", "freeway", "golf course", "harbor", "intersection", "medium residential", "mobile home park",
    "overpass", "parking lot", "river", "runway", "sparse residential", "storage tanks", "tennis court",
]
NWPU_CLASSES = [
    "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral", "church",
    "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest", "freeway",
    "golf course", "ground track field", "harbor", "industrial area", "intersection", "island", "lake", "meadow",
    "medium residential", "mobile home park", "mountain", "overpass", "palace", "parking lot", "railway",
    "railway station", "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship", "snowberg",
    "sparse residential", "stadium", "storage tank", "tennis court", "terrace", "thermal power station", "wetland",
]

# name -> (JSON key, comparison, threshold, shown as)
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "step speed-up": ("step_speedup_vs_reference", ">=", 10.0, ">= 10x"),
    "feature throughput": ("feature_throughput_ratio", ">=", 0.9, ">= 0.9x raw open_clip"),
    "FLARE overhead": ("flare_overhead_fraction", "<=", 0.20, "<= 20% of round wall time"),
    "plaintext upload": ("upload_bytes_plain", "<=", 8.5 * 1024, "<= 8.5 KB (8,704 B)"),
    "CKKS upload": ("upload_bytes_ckks", "<=", 100 * 1024, "<= 100 KB (102,400 B)"),
    "peak RSS": ("peak_rss_mb", "<=", 2.5 * 1024, "<= 2.5 GB (2,560 MB)"),
}

# Settings of the full run and of --quick (fewer repeats and images; K=45 and the FLARE job skipped).
# Training steps: ref_repeats timed reference steps, each followed by proj_per_ref timed project steps; before them
# a light warm-up of the reference (its text encoder; the image encoder is warm from the feature part), ref_warmup
# full reference steps and proj_warmup project steps.
FULL = dict(feature_images=64, feature_images_cuda=210, feature_repeats=3, ref_warmup=0, ref_repeats=4,
            proj_warmup=2, proj_per_ref=3, class_counts=(21, 45), rss_images=48, rss_epochs=2, flare=True,
            flare_sites=10, flare_rounds=3, site_images=105, site_rounds=2)
QUICK = dict(feature_images=32, feature_images_cuda=64, feature_repeats=1, ref_warmup=0, ref_repeats=1,
             proj_warmup=1, proj_per_ref=3, class_counts=(21,), rss_images=12, rss_epochs=2, flare=False,
             flare_sites=2, flare_rounds=2, site_images=32, site_rounds=1)


_START = time.perf_counter()


def _progress(message: str) -> None:
    print(f"[bench {time.perf_counter() - _START:4.0f}s] {message}", file=sys.stderr, flush=True)


# ---- timing helpers -------------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return time.perf_counter() - start, value


def _load_average() -> list[float] | None:
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
def bench_images(count: int, workdir: Path) -> tuple[list[tuple[Path, int]], dict]:
    """`count` image files with labels: the real UC Merced sample when present, else synthetic 224 px scenes."""
    if REAL_DATA.is_dir():
        from .data.readers import list_dataset

        listing = list_dataset("ucmerced", REAL_DATA, verify=False, progress=False)
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
        info = {"source": "ucmerced-sample (real images)", "path": str(REAL_DATA), "available": len(listing.records),
                "classes": len(listing.classes)}
        return items, info
    from .data.synth import MAX_CLASSES, make_synthetic

    classes = min(MAX_CLASSES, 21)
    per_class = max(1, math.ceil(count / classes))
    root = make_synthetic(workdir / "synthetic", classes=classes, per_class=per_class, size=224, seed=0,
                          progress=False)
    files = sorted(p for p in root.rglob("*.png"))
    names = sorted({p.parent.name for p in files})
    items = [(p, names.index(p.parent.name)) for p in files]
    items = sorted(items, key=lambda it: (int(it[0].stem.rsplit("_", 1)[1]), it[1]))[:count]
    info = {"source": f"synthetic 224 px scenes (the real sample {REAL_DATA} is absent)", "path": str(root),
            "available": len(files), "classes": classes}
    return items, info


def _config(device: str, algorithm: str = "fedrsclip", arch: str = ARCH, extra: Sequence[str] = ()):
    from .config import load_config

    return load_config(overrides=[f"model.arch={arch}", "model.pretrained=null", "model.random_init=true",
                                  f"model.device={device}", f"algorithm={algorithm}", *extra])


# ---- 1. training step: project path vs reference --------------------------------------------------------------------
def reference_text_features(learner, clip) -> Any:
    """Text features [P, K, E] of the learner's prompts as stock open_clip computes them (CoOp-style): token
    embeddings of the full 77-token sequences with the context vectors spliced in, + positional embedding, the
    transformer with the full causal mask, ln_final, the EOT token's output, the projection."""
    import torch

    ctx = torch.stack(learner.contexts)  # [P, n_ctx, W]
    num_prompts = ctx.shape[0]
    token_ids = learner.token_ids  # [K, 77]
    num_classes = token_ids.shape[0]
    x = clip.token_embedding(token_ids).float().unsqueeze(0).repeat(num_prompts, 1, 1, 1)  # [P, K, 77, W]
    rows = torch.arange(num_classes, device=ctx.device)[:, None].expand_as(learner.ctx_positions)
    for p in range(num_prompts):
        x[p, rows, learner.ctx_positions] = ctx[p].unsqueeze(0).expand(num_classes, -1, -1).to(x.dtype)
    x = x.flatten(0, 1)  # [P*K, 77, W]
    x = x + clip.positional_embedding.to(x.dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1).repeat(num_prompts)]
    proj = clip.text_projection
    x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x.view(num_prompts, num_classes, -1)


class _StepPath:
    """One way of doing a local training step, with its own prompts and optimiser (PromptTrainer.train_round's
    step: text features, the algorithm's loss, backward, SGD)."""

    def __init__(self, trainer, text_fn: Callable[[], Any], feats_fn: Callable[[], Any], labels, init):
        self.trainer, self.text_fn, self.feats_fn, self.labels, self.init = trainer, text_fn, feats_fn, labels, init
        self.device = trainer.device
        self.reset()

    def reset(self) -> None:
        """Back to the initial prompts, with a fresh optimiser (as every round starts)."""
        import torch

        learner, tc = self.trainer.model.learner, self.trainer.cfg.train
        with torch.no_grad():
            for param, value in zip(learner.contexts, self.init):
                param.copy_(value)
        self.optimizer = torch.optim.SGD(learner.contexts, lr=tc.lr, momentum=tc.momentum,
                                         weight_decay=tc.weight_decay)
        self.trainer.model.train()

    def _step(self) -> tuple[float, Any]:
        global_feats, tokens = self.feats_fn()
        text = self.text_fn()
        loss, _parts = self.trainer._loss(text, global_feats, tokens, self.labels, None, None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad = self.trainer.model.learner.shared_ctx.grad.detach().clone()
        self.optimizer.step()
        return float(loss.detach()), grad

    def step(self) -> tuple[float, float, Any]:
        """(seconds, loss, gradient of the shared prompt) of one step."""
        seconds, (loss, grad) = _timed(self._step, self.device)
        return seconds, loss, grad


def bench_step(backbone, images, labels, num_classes: int, settings: dict, arch: str = ARCH,
               cache: tuple[Any, Any] | None = None) -> tuple[dict, dict]:
    """ms of one local step on both paths, the speed-up and the loss agreement, for `num_classes` classes.

    images: the preprocessed batch [B, 3, H, W]; cache: its (global, tokens) features as the project caches them
    (fp16, from features.extract_features), else computed here the same way. Returns (figures, the trainer's
    payload). Each path has its own copy of the same initial prompts and trains on the same batch. The paths are
    timed interleaved (one reference step, then `proj_per_ref` project steps), so a change of load on the machine
    hits both. A third, untimed path runs the project's code in lockstep with the reference on the very features
    the reference has just computed live: its losses must equal the reference's.
    """

    from .trainer import PromptTrainer

    classnames = UCMERCED_CLASSES if num_classes == 21 else NWPU_CLASSES if num_classes == 45 else \
        [f"class {i}" for i in range(num_classes)]
    cfg = _config(str(backbone.device), arch=arch)  # the backbone's own architecture
    device = backbone.device
    labels = (labels % num_classes).to(device)
    trainers = [PromptTrainer(cfg, backbone, classnames, site="site-1") for _ in range(3)]
    init = [p.detach().clone() for p in trainers[0].model.learner.contexts]

    if cache is None:  # as extract_features stores features: fp16 on the CPU
        cache = tuple(t.half().cpu() for t in backbone.encode_images(images))
    g16, t16 = cache
    live: list = []

    def project_feats():  # exactly as PromptTrainer.train_round reads its FeatureSet
        return g16.to(device).float(), t16.to(device)

    def reference_feats():  # the image encoder (no_grad) on the preprocessed images, every step
        live[:] = [backbone.encode_images(images)]
        return live[0]

    def same_feats():  # the features the reference computed in its last step
        return live[0]

    ref_learner = trainers[0].model.learner
    reference = _StepPath(trainers[0], lambda: reference_text_features(ref_learner, backbone.model),
                          reference_feats, labels, init)
    project = _StepPath(trainers[1], trainers[1].model.learner.text_features, project_feats, labels, init)
    same = _StepPath(trainers[2], trainers[2].model.learner.text_features, same_feats, labels, init)

    # Warm-up (then back to the initial prompts): the reference's text encoder on cached features (its image encoder
    # is warm from the feature part and the cache above), plus any full reference steps, and the project's steps.
    reference.feats_fn = project_feats
    reference.step()
    reference.feats_fn = reference_feats
    for _ in range(settings["ref_warmup"]):
        reference.step()
    for _ in range(settings["proj_warmup"]):
        project.step()
    for path in (reference, project):
        path.reset()

    repeats, per_ref = settings["ref_repeats"], settings["proj_per_ref"]
    tokens_ref, tokens_proj = int(ref_learner.token_ids.shape[1]), int(ref_learner.length)
    _progress(f"step K={num_classes}: {repeats} reference steps (image encoder + {tokens_ref}-token text encoder), "
              f"each followed by {per_ref} project steps (cached features + {tokens_proj}-token text encoder)")
    ref_times, proj_times, ref_losses, same_losses, proj_losses = [], [], [], [], []
    ref_grad = same_grad = None
    for i in range(repeats):
        seconds, loss, grad = reference.step()
        ref_times.append(seconds)
        ref_losses.append(loss)
        _, loss, grad_same = same.step()
        same_losses.append(loss)
        if i == 0:
            ref_grad, same_grad = grad, grad_same
        for _ in range(per_ref):
            seconds, loss, _grad = project.step()
            proj_times.append(seconds)
            proj_losses.append(loss)
        _progress(f"step K={num_classes}: {i + 1}/{repeats}: reference {1e3 * ref_times[-1]:.0f} ms, project "
                  f"{1e3 * statistics.median(proj_times[-per_ref:]):.0f} ms")
    ref_ms = 1e3 * statistics.median(ref_times)
    proj_ms = 1e3 * statistics.median(proj_times)
    figures = {
        "classes": num_classes,
        "reference_ms": ref_ms,
        "project_ms": proj_ms,
        "speedup": ref_ms / proj_ms,
        "reference_samples": len(ref_times),
        "project_samples": len(proj_times),
        "reference_ms_all": [1e3 * t for t in ref_times],
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(same_losses, ref_losses)),
        "loss_steps_compared": len(ref_losses),
        # the project's first step starts from the same prompts: what training on the fp16 cache changes
        "loss_abs_diff_fp16_cache": abs(proj_losses[0] - ref_losses[0]),
        "grad_max_rel_diff": float((same_grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30)),
        "loss_first_step": ref_losses[0],
        "project_text_tokens": tokens_proj,
        "reference_text_tokens": tokens_ref,
    }
    return figures, trainers[1].payload()


# ---- 2. feature extraction throughput -------------------------------------------------------------------------------
def raw_open_clip_features(backbone, items: Sequence[tuple[Path, int]], batch_size: int = 64):
    """Decode, preprocess and `model.encode_image` the images, as a user of open_clip would, in batches."""
    import torch

    from .data.images import load_rgb

    model, device, amp = backbone.model, backbone.device, backbone.amp_dtype
    out = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([backbone.preprocess(load_rgb(path)) for path, _ in items[start:start + batch_size]])
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model.encode_image(batch.to(device)).float().cpu())
    return torch.cat(out)


def bench_features(backbone, items: Sequence[tuple[Path, int]], repeats: int) -> tuple[dict, Any]:
    """images/s of features.extract_features and of raw open_clip on `items`; also returns the project's features."""
    from .features import extract_features

    device = backbone.device
    warm = list(items[: min(len(items), 2)])
    _progress(f"features: warm-up on {len(warm)} images")
    extract_features(backbone, warm, progress=False)
    raw_open_clip_features(backbone, warm)
    project, raw = [], []
    features = None
    for r in range(repeats):
        seconds, features = _timed(lambda: extract_features(backbone, list(items), progress=False), device)
        project.append(len(items) / seconds)
        seconds, _ = _timed(lambda: raw_open_clip_features(backbone, items), device)
        raw.append(len(items) / seconds)
        _progress(f"features: pass {r + 1}/{repeats}: project {project[-1]:.1f} img/s, raw open_clip "
                  f"{raw[-1]:.1f} img/s ({len(items)} images)")
    p, q = statistics.median(project), statistics.median(raw)
    return {"feature_images_per_s_project": p, "feature_images_per_s_raw": q, "feature_throughput_ratio": p / q,
            "feature_images": len(items), "feature_repeats": repeats}, features


# ---- 3. upload sizes ------------------------------------------------------------------------------------------------
def plaintext_upload(payload: dict) -> dict:
    """The payload's values and bytes, and FLARE's serialized DXO around them alone (no FLARE headers, no round
    record: a lower bound; the full run replaces `upload_bytes_plain` with the real upload it measures)."""
    import numpy as np

    from .trainer import payload_nbytes

    out: dict[str, Any] = {"payload_values": int(sum(np.asarray(v).size for v in payload.values())),
                           "upload_bytes_payload_nbytes": payload_nbytes(payload),
                           "upload_bytes_plain_serialized": None, "upload_bytes_dxo_envelope": None}
    try:
        from nvflare.apis.dxo import DXO, DataKind, MetaKey

        from .flare.upload_audit import account

        def size(data: dict) -> dict:
            dxo = DXO(DataKind.WEIGHTS, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 168})
            return account(dxo.to_shareable())

        bare = size(dict(payload))
        out["upload_bytes_plain_serialized"] = bare["total"]
        out["upload_bytes_dxo_envelope"] = size({})["total"]
        out["upload_dxo_breakdown"] = {k: bare[k] for k in ("values", "data_encoding", "meta", "envelope")}
        out["upload_plain_how"] = ("lower bound: nvflare fobs.dumps of a WEIGHTS DXO shareable holding the payload and "
                                   "the sample count only (FLARE's task headers and peer context and the executor's "
                                   "round record come on top; the full run measures them)")
    except Exception as exc:  # nvflare missing or its API changed: the values' bytes only
        out["upload_plain_how"] = f"numpy nbytes only (FLARE serialization unavailable: {type(exc).__name__}: {exc})"
    out["upload_bytes_plain"] = out["upload_bytes_plain_serialized"] or out["upload_bytes_payload_nbytes"]
    return out


def ckks_upload(values, sites: int = 10) -> dict:
    """The CKKS job's upload as FLARE serializes it (fobs of the WEIGHTS DXO), the aggregation error over `sites`
    sample-weighted updates, and the same payload on FLARE's stock HE path (HEBuilder's default N=8192; its
    CKKSVector decomposer ships the context with every vector)."""
    import numpy as np

    out: dict[str, Any] = {"upload_bytes_ckks": None, "upload_bytes_ckks_stock_flare": None}
    try:
        import tenseal as ts
        from nvflare.apis.dxo import DXO, DataKind, MetaKey
        from nvflare.app_common.decomposers import common_decomposers
        from nvflare.app_opt.he import decomposers
        from nvflare.fuel.utils import fobs
    except ImportError as exc:
        out["upload_ckks_note"] = f"TenSEAL or nvflare is not installed ({exc})"
        return out
    from .he import DEFAULT_PARAMS, EncryptedSum, decrypt_average, encrypt_update, load_context, make_contexts

    common_decomposers.register()
    decomposers.register()

    def wire(data: dict) -> int:
        dxo = DXO(DataKind.WEIGHTS, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 168})
        return len(fobs.dumps(dxo.to_shareable()))

    base = np.asarray(values, dtype=np.float32)
    client, server = make_contexts()
    site_ctx = load_context(client, "client", need_secret=True)
    total = EncryptedSum(load_context(server, "server", need_secret=False))
    rng = np.random.default_rng(0)
    updates = [base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(sites)]
    weights = rng.integers(50, 500, sites).astype(float)
    for k, (update, weight) in enumerate(zip(updates, weights)):
        encrypted = encrypt_update(site_ctx, {"shared_ctx": update}, float(weight))
        total.add(encrypted, f"site-{k + 1}")
        if k == 0:
            out["upload_bytes_ckks"] = wire(encrypted.to_data())
            out["upload_bytes_ckks_ciphertext"] = encrypted.nbytes
    mean = decrypt_average(site_ctx, total.result(), "bench")["shared_ctx"]
    expected = np.tensordot(weights / weights.sum(), np.stack(updates).astype(np.float64), axes=1)
    out["ckks_aggregation_max_error"] = float(np.abs(mean - expected).max())

    stock = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40],
                       encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    stock.generate_relin_keys()
    stock.global_scale = 2 ** 40
    out["upload_bytes_ckks_stock_flare"] = wire({"shared_ctx": ts.ckks_vector(stock, base.ravel().tolist())})
    params = DEFAULT_PARAMS
    out["upload_ckks_how"] = (f"fobs of the WEIGHTS DXO: this project's CKKS update (N={params.poly_modulus_degree}, "
                              f"moduli {list(params.coeff_mod_bit_sizes)}, scale 2^{params.scale_bits}; error over "
                              f"{sites} weighted sites after decryption) vs FLARE's stock HE path (N=8192, the "
                              "context with every vector)")
    return out


def full_model_upload(num_classes: int = 21) -> dict:
    from .classifier import build_classifier, classifier_num_params

    cfg = _config("cpu", algorithm="fedavg-full")
    model = build_classifier(cfg, num_classes)
    values = classifier_num_params(model)
    return {"upload_bytes_full_model": 4 * values, "full_model_values": values,
            "full_model_arch": f"{cfg.classifier.arch}, {num_classes} classes, float32"}


# ---- 4. peak memory of one site process -----------------------------------------------------------------------------
def _rss_child(spec: str) -> None:
    """Run in a fresh process: load ViT-B/16 on CPU, extract features, train a few steps; print the peak RSS."""
    import torch

    args = json.loads(spec)
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    with contextlib.suppress(Exception):  # a FLARE site process has nvflare loaded as well
        import fedrsclip.flare.executor  # noqa: F401
    from .backbone import load_backbone
    from .features import extract_features
    from .trainer import PromptTrainer

    cfg = _config("cpu", extra=[f"train.local_epochs={int(args['epochs'])}", f"train.batch_size={BATCH}"])
    backbone = load_backbone(cfg.model)
    items = [(Path(p), int(label)) for p, label in args["items"]]
    features = extract_features(backbone, items, progress=False)
    trainer = PromptTrainer(cfg, backbone, UCMERCED_CLASSES, site="site-1")
    result = trainer.train_round(features)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux: this process's own high-water mark
        hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                       if line.startswith("VmHWM:"))
    print(json.dumps({"ru_maxrss_mb": peak_kib / 1024, "vmhwm_mb": None if hwm_kib is None else hwm_kib / 1024,
                      "steps": result.metrics["steps"], "images": len(items)}))


def bench_peak_rss(items: Sequence[tuple[Path, int]], epochs: int, threads: int | None) -> dict:
    spec = json.dumps({"items": [(str(p), int(label)) for p, label in items], "epochs": epochs,
                       "threads": threads})
    _progress(f"peak RSS: a fresh site process (ViT-B/16 on CPU, {len(items)} images, {epochs} epoch(s))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", f"from fedrsclip.bench import _rss_child; _rss_child({spec!r})"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"peak_rss_mb": None, "peak_rss_note": f"the site process failed (exit {proc.returncode}): "
                                                      f"{proc.stderr.strip()[-500:]}"}
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    # Linux carries the parent's RSS at fork into the child's ru_maxrss (the pre-exec memory's high-water mark), so
    # it is measured before this process loads a model, and cross-checked with VmHWM (the child's own peak).
    peak = child["ru_maxrss_mb"]
    note = (f"ru_maxrss of a fresh process: ViT-B/16 on CPU, features of {child['images']} images, "
            f"{child['steps']} training steps (batch {BATCH}, K=21), nvflare imported")
    if child["vmhwm_mb"] is not None and peak > 1.05 * child["vmhwm_mb"]:
        note += (f"; ru_maxrss ({peak:.0f} MB) includes this parent process's memory at fork, so the child's own "
                 f"high-water mark VmHWM is reported")
        peak = child["vmhwm_mb"]
    return {"peak_rss_mb": peak, "peak_rss_mb_ru_maxrss": child["ru_maxrss_mb"], "peak_rss_mb_vmhwm": child["vmhwm_mb"],
            "peak_rss_note": note}


# ---- 5. FLARE overhead ----------------------------------------------------------------------------------------------
def overhead_from_results(results: dict) -> dict:
    """The share of round wall time not spent in local training, from a run's `fedrsclip_results.json`.

    Per round: wall = finished - started (server clock); local = the slowest site's task seconds (evaluating the
    received model + training: the sites run in parallel, so the slowest one is the round's critical path). The
    first round also builds every site (backbone, data, features) outside the task's seconds, so it is left out
    when later rounds exist. Returns the median over the rounds used, plus the same with training seconds only.
    """
    rounds = [r for r in results.get("rounds", []) if isinstance(r.get("started"), (int, float))
              and isinstance(r.get("finished"), (int, float)) and r.get("sites")]
    if not rounds:
        return {"flare_overhead_fraction": None, "flare_overhead_note": "the results file has no finished round"}
    used = [r for r in rounds if r["round"] != 1] or rounds
    fractions, train_fractions, walls, locals_ = [], [], [], []
    for rnd in used:
        wall = float(rnd["finished"]) - float(rnd["started"])
        sites = [s for s in rnd["sites"].values()
                 if not s.get("missing") and isinstance(s.get("seconds"), (int, float))]
        if wall <= 0 or not sites:
            continue
        local = max(float(s["seconds"]) for s in sites)
        train = max(float(s.get("train_seconds", s["seconds"])) for s in sites)
        walls.append(wall)
        locals_.append(local)
        fractions.append(max(0.0, 1.0 - local / wall))
        train_fractions.append(max(0.0, 1.0 - train / wall))
    if not fractions:
        return {"flare_overhead_fraction": None, "flare_overhead_note": "no round with site timings"}
    note = (f"median over rounds {[r['round'] for r in used]} of 1 - (slowest site's task seconds) / (round wall "
            "time)" + ("; round 1 includes site start-up and is left out" if len(used) < len(rounds) else
                       "; only round 1 available: includes site start-up"))
    return {"flare_overhead_fraction": statistics.median(fractions),
            "flare_overhead_fraction_train_only": statistics.median(train_fractions),
            "flare_round_wall_s": statistics.median(walls), "flare_site_seconds_max": statistics.median(locals_),
            "flare_overhead_s_per_round": statistics.median(w - l for w, l in zip(walls, locals_)),
            "flare_rounds_used": [r["round"] for r in used], "flare_overhead_note": note}


def _job_model(job: Path) -> str | None:
    """The job's model.arch (its fedrsclip.yaml), for the report."""
    import yaml

    cfg = yaml.safe_load((job / "app" / "config" / "fedrsclip.yaml").read_text()) or {}
    model = cfg.get("model") or {}
    weights = "random weights" if model.get("random_init") else f"weights {model.get('pretrained')}"
    return f"{model.get('arch', '?')} ({weights})"


class _DemoLines(io.TextIOBase):
    """stdout for the demo: its progress lines go to stderr, its table is dropped (the bench prints its own)."""

    def __init__(self):
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.startswith("[demo]"):
                _progress(f"FLARE: {line[7:]}")
        return len(text)


def _audited_job(workdir: Path) -> Path:
    """A copy of the repository's job with the upload audit widget on every site (the shipped job has none)."""
    from .flare.job import DEFAULT_JOB, prepare_job
    from .io import atomic_write_json

    job = prepare_job(DEFAULT_JOB, workdir / DEFAULT_JOB.name)
    path = job / "app" / "config" / "config_fed_client.json"
    client = json.loads(path.read_text())
    client.setdefault("components", []).append(
        {"id": "upload_audit", "path": "fedrsclip.flare.upload_audit.UploadAudit", "args": {}})
    atomic_write_json(path, client)
    return job


def upload_from_audits(workspace: Path, values_bytes: int = 2048 * 4) -> dict:
    """The real plaintext upload per site per round, from the sites' upload audits of a simulator run.

    The job's model sends fewer values than ViT-B/16; its serialized update differs from a ViT-B/16 one only in
    the array's bytes as long as both arrays take the same msgpack length prefix (256 B to 64 KiB: bin 16), so the
    ViT-B/16 figure is the measured total with the values swapped: total - job values + `values_bytes`.
    """
    from .flare.upload_audit import read_audit

    entries = [e for p in sorted(workspace.glob("site-*/*/fedrsclip/upload_audit-*.json")) for e in read_audit(p)]
    if not entries:
        return {"upload_bytes_plain_measured": None, "upload_note": f"no upload audit under {workspace}"}
    later = [e for e in entries if isinstance(e.get("round"), int) and e["round"] > 0] or entries
    typical = sorted(later, key=lambda e: e["total"])[len(later) // 2]  # the median upload
    out: dict[str, Any] = {
        "upload_bytes_plain_measured": typical["total"], "upload_job_values_bytes": typical["values"],
        "upload_bytes_plain_first_round": max((e["total"] for e in entries if e.get("round") == 0), default=None),
        "upload_breakdown": {k: typical[k] for k in ("values", "data_encoding", "meta", "headers", "envelope")},
        "upload_fields": typical["fields"], "upload_results_audited": len(entries)}
    if 256 <= typical["values"] < 65536 and 256 <= values_bytes < 65536:
        out["upload_bytes_plain"] = typical["total"] - typical["values"] + values_bytes
        out["upload_plain_how"] = (
            "measured: FOBS size of the train result each site sent in the 10-site simulator run (after FLARE added "
            "its headers and peer context; arrays inline), rounds after the first (the first also carries the run's "
            f"descriptions), with the job's {typical['values']:,} B of values replaced by ViT-B/16's {values_bytes:,}")
    return out


def bench_flare_overhead(sites: int, rounds: int, workdir: Path, arch: str | None = None,
                         threads: int | None = None) -> dict:
    """Run the FLARE job (jobs/fedrsclip, with an upload audit on every site) in the simulator; compute FLARE's
    overhead from its results file and the real upload from the audits.

    arch: None runs the job's own model (its offline demo: a small random-weight CLIP on synthetic scenes); a
    name (e.g. ViT-B-16, random weights) makes every site load that model - 10 ViT-B/16 sites need ~20 GB of RAM.
    threads: simulator threads (default: one per site).
    """
    try:
        from .flare.demo import run_demo
        from .flare.job import DEFAULT_JOB
        from .flare.report import SIMULATOR_RESULTS, load_results
    except Exception as exc:
        return {"flare_overhead_fraction": None,
                "flare_overhead_note": f"the FLARE job machinery is not importable ({type(exc).__name__}: {exc})"}
    if not (DEFAULT_JOB / "meta.json").is_file():
        return {"flare_overhead_fraction": None, "flare_overhead_note": f"no FLARE job at {DEFAULT_JOB}"}
    workdir.mkdir(parents=True, exist_ok=True)
    workspace = workdir / "flare-ws"
    overrides = [f"model.arch={arch}", "model.pretrained=null", "model.random_init=true"] if arch else []
    try:
        model = arch or (_job_model(DEFAULT_JOB) or "the job's model")
    except Exception:
        model = arch or "the job's model"
    _progress(f"FLARE: simulator job {DEFAULT_JOB.name}, {sites} sites, {rounds} rounds, {model}; this takes minutes")
    start = time.perf_counter()
    with contextlib.redirect_stdout(_DemoLines()):
        rc = run_demo(str(workspace), sites=sites, threads=threads, job=str(_audited_job(workdir)), rounds=rounds,
                      overrides=overrides, log_file=str(workdir / "flare-ws.log"))
    wall = time.perf_counter() - start
    try:
        results = load_results(workspace / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        return {"flare_overhead_fraction": None,
                "flare_overhead_note": f"the simulator run (exit {rc}) left no results file: {exc}"}
    out = overhead_from_results(results)
    out.update(flare_sites=sites, flare_rounds=rounds, flare_threads=threads or sites, flare_job_wall_s=wall,
               flare_exit_code=rc, flare_model=f"{model}, the job's own data settings")
    if rc != 0:
        out["flare_overhead_note"] = f"the simulator exited with {rc}; " + out.get("flare_overhead_note", "")
    out.update(upload_from_audits(workspace))
    return out


def realistic_overhead(flare: dict, site_round_s: float | None) -> dict:
    """FLARE's share of a round whose local work is a real site's: FLARE's seconds per round (measured in the
    simulator job) against one ViT-B/16 site's round (measured in this process)."""
    overhead = flare.get("flare_overhead_s_per_round")
    if overhead is None or not site_round_s:
        return {}
    return {"flare_overhead_fraction_demo_job": flare.get("flare_overhead_fraction"),
            "flare_overhead_fraction": overhead / (overhead + site_round_s),
            "flare_overhead_how": (
                f"FLARE's seconds per round in the {flare.get('flare_sites')}-site simulator job (round wall time - "
                f"the slowest site's task seconds, median of the rounds after the first: {overhead:.2f} s) / (those "
                f"+ one ViT-B/16 site's round measured here: {site_round_s:.2f} s); the demo job's own fraction, "
                "with its tiny model, is flare_overhead_fraction_demo_job")}


# ---- the whole benchmark --------------------------------------------------------------------------------------------
def _target_rows(results: dict) -> dict:
    rows = {}
    for name, (key, op, limit, shown) in TARGETS.items():
        value = results.get(key)
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        rows[name] = {"key": key, "value": value, "target": shown, "pass": ok}
    return rows


def run_bench(quick: bool = False, device: str = "auto", out: str | None = None, threads: int | None = None,
              flare: bool | None = None, flare_arch: str | None = None) -> dict:
    """Measure everything (see the module doc) and return the figures; `out`: also write them there as JSON.

    quick: the reduced run (under two minutes on 2 CPU cores). threads: torch.set_num_threads (default: torch's).
    flare: run the FLARE simulator job (default: in the full run only). flare_arch: the model its sites load
    (random weights; default: the job's own, the offline demo's small CLIP).
    """
    import torch

    from .backbone import load_backbone, resolve_device

    settings = dict(QUICK if quick else FULL)
    if flare is not None:
        settings["flare"] = flare
    if threads:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    global _START
    begin = _START = time.perf_counter()
    dev = resolve_device(device)
    results: dict[str, Any] = {"quick": quick, "device": device_name(dev), "device_type": dev.type,
                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                               "arch": f"{ARCH} (random weights)", "load_average_start": _load_average()}
    with tempfile.TemporaryDirectory(prefix="fedrsclip-bench-") as tmp:
        workdir = Path(tmp)
        if dev.type == "cuda":
            settings["feature_images"] = settings["feature_images_cuda"]
        items, info = bench_images(max(settings["feature_images"], BATCH, settings["rss_images"]), workdir)
        feature_items = items[: settings["feature_images"]]
        info["used_features"] = len(feature_items)
        info["used_step_batch"] = BATCH
        results["images"] = info
        _progress(f"images: {info['source']}; device {results['device']}, {results['torch_threads']} torch threads")

        # First, while this process holds no model (Linux counts the parent's memory at fork into the child's
        # ru_maxrss).
        results.update(bench_peak_rss(items[: settings["rss_images"]], settings["rss_epochs"], threads))

        _progress(f"loading {ARCH} with random weights")
        backbone = load_backbone(_config(device).model)
        results["feature_extraction"] = "features.extract_features vs open_clip model.encode_image (both: load_rgb" \
                                        " decode + the model's preprocess + encoder, batches of 64)"
        figures, features = bench_features(backbone, feature_items, settings["feature_repeats"])
        results.update(figures)

        from .data.images import load_rgb

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
                results.update({f"step_ms_project_{key}": None, f"step_ms_reference_{key}": None,
                                f"step_speedup_{key}": None, f"step_{key}_note": "skipped in --quick"})
                continue
            steps[k], trainer_payload = bench_step(backbone, images, labels, k, settings, cache=cache)
            payload = payload or trainer_payload
            results.update({f"step_ms_project_{key}": steps[k]["project_ms"],
                            f"step_ms_reference_{key}": steps[k]["reference_ms"],
                            f"step_speedup_{key}": steps[k]["speedup"]})
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
            "reference's")

        from .scaling import time_site_round

        n = settings["site_images"]
        _progress(f"one site's round: K=21, {n} train + {n} test images (UC Merced at 10 sites)")
        site_round = time_site_round(backbone, features, 21, n, rounds=settings["site_rounds"],
                                     warmup=not quick)  # --quick: a single round, no warm-up
        results["site_round"] = {**site_round, "how": "PromptTrainer.evaluate (test split) + train_round (batch 32, "
                                 "1 local epoch), as a FLARE train task does; real image features repeated to the count"}
        results["site_round_s"] = site_round["round_s"]
        del backbone, features

        _progress("upload sizes: plaintext DXO, CKKS, full-model baseline")
        results.update(plaintext_upload(payload))
        results.update(ckks_upload(next(iter(payload.values()))))
        results.update(full_model_upload(21))

        if settings["flare"]:
            flare_figures = bench_flare_overhead(settings["flare_sites"], settings["flare_rounds"], workdir,
                                                 arch=flare_arch)
            results.update(flare_figures)
            results.update(realistic_overhead(flare_figures, results["site_round_s"]))
        else:
            results.update({"flare_overhead_fraction": None,
                            "flare_overhead_note": "skipped in --quick (a 10-site simulator job takes minutes); "
                                                   "run `fedrsclip bench` without --quick"})
    results["wall_s"] = time.perf_counter() - begin
    results["load_average_end"] = _load_average()
    results["targets"] = _target_rows(results)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results


# ---- output ---------------------------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{suffix}"


def format_table(r: dict) -> str:
    lines = [f"fedrsclip bench{' --quick' if r['quick'] else ''}: {r['arch']} on {r['device']}, "
             f"{r['torch_threads']} torch threads; images: {r['images']['source']}", ""]
    rows = [("training step K=21: reference / project", f"{_fmt(r['step_ms_reference_k21'], '.0f')} / "
             f"{_fmt(r['step_ms_project_k21'], '.0f')} ms", _fmt(r['step_speedup_k21'], '.1f', 'x')),
            ("training step K=45: reference / project", f"{_fmt(r['step_ms_reference_k45'], '.0f')} / "
             f"{_fmt(r['step_ms_project_k45'], '.0f')} ms", _fmt(r['step_speedup_k45'], '.1f', 'x')
             if r['step_speedup_k45'] is not None else r.get('step_k45_note', '')),
            ("same loss on both paths (max |diff|)", _fmt(r["loss_max_abs_diff"], ".2e"),
             "PASS" if r["loss_equal"] else "MISS (> 1e-4)"),
            ("feature extraction: project / raw open_clip", f"{_fmt(r['feature_images_per_s_project'])} / "
             f"{_fmt(r['feature_images_per_s_raw'])} img/s", _fmt(r['feature_throughput_ratio'], '.2f', 'x')),
            ("upload, plaintext: values / bare DXO / as sent", f"{r['upload_bytes_payload_nbytes']:,} / "
             f"{_fmt(r['upload_bytes_plain_serialized'], ',')} / "
             f"{_fmt(r['upload_bytes_plain'] if 'upload_bytes_plain_measured' in r else None, ',')} B",
             f"{r['payload_values']:,} values" + (
                 "; as sent: " + ", ".join(f"{k} {v:,}" for k, v in r["upload_breakdown"].items())
                 if r.get("upload_breakdown") else "")),
            ("upload, CKKS (this project) / FLARE stock HE", f"{_fmt(r['upload_bytes_ckks'], ',')} / "
             f"{_fmt(r['upload_bytes_ckks_stock_flare'], ',')} B", ""),
            ("upload, full model (ViT-Tiny, 21 classes)", f"{r['upload_bytes_full_model']:,} B",
             f"{r['full_model_values']:,} values"),
            ("peak RSS of one site process (CPU)", f"{_fmt(r['peak_rss_mb'], '.0f')} MB", ""),
            ("one ViT-B/16 site's round (evaluate + train)", f"{_fmt(r.get('site_round_s'), '.2f')} s",
             f"K=21, {r['site_round']['train_images']} train + {r['site_round']['test_images']} test images, "
             f"{r['site_round']['steps']} steps" if r.get("site_round") else ""),
            ("FLARE overhead (share of a real site's round)", _fmt(r["flare_overhead_fraction"], ".1%"),
             f"FLARE {_fmt(r.get('flare_overhead_s_per_round'), '.2f')} s a round ({r.get('flare_sites')} sites, "
             f"{r.get('flare_model')}; that job's own share: {_fmt(r.get('flare_overhead_fraction_demo_job'), '.1%')})"
             if r["flare_overhead_fraction"] is not None else r.get("flare_overhead_note", ""))]
    width = max(len(a) for a, _, _ in rows)
    lines += [f"  {a:<{width}}  {b:<26} {c}" for a, b, c in rows]
    lines += ["", "targets:"]
    for name, row in r["targets"].items():
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[row["pass"]]
        value = row["value"]
        shown = "n/a" if value is None else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        lines.append(f"  {verdict}  {name:<20} {shown:>12}   target {row['target']}")
    lines.append(f"\nwall time {r['wall_s']:.0f} s")
    loads = [x for x in (r.get("load_average_start"), r.get("load_average_end")) if x]
    if r.get("device_type") == "cpu" and loads and max(x[0] for x in loads) > (os.cpu_count() or 1):
        lines.append(f"warning: the machine was busy with other work (1-minute load average up to "
                     f"{max(x[0] for x in loads):.1f} on {os.cpu_count()} cores): CPU timings are noisy")
    return "\n".join(lines)


def add_bench_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="measure step speed-up, feature throughput, upload sizes, memory and "
                                            "FLARE overhead (last stdout line: one JSON object)")
    p.add_argument("--quick", action="store_true", help="reduced run, under two minutes on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--json-out", metavar="FILE", help="also write the figures to this JSON file")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    flare = p.add_mutually_exclusive_group()
    flare.add_argument("--flare", dest="flare", action="store_true", default=None,
                       help="run the FLARE simulator job even with --quick")
    flare.add_argument("--no-flare", dest="flare", action="store_false", help="skip the FLARE simulator job")
    p.add_argument("--flare-arch", metavar="MODEL", help="open_clip model the FLARE job's sites load, with random "
                   "weights (default: the job's own; 10 ViT-B-16 sites need ~20 GB of RAM)")
    p.add_argument("--scaling", action="store_true", help="instead: round time vs classes, images per site and sites "
                   "(about 10 minutes on 2 CPU cores; with --quick a smoke run); writes scaling.json and scaling.png")
    p.add_argument("--out-dir", default="workspaces/scaling", help="where --scaling writes (default: %(default)s)")
    p.set_defaults(func=bench_command)
    return p


def bench_command(args: argparse.Namespace) -> int:
    if getattr(args, "scaling", False):
        from .scaling import scaling_command

        if args.threads:
            import torch

            torch.set_num_threads(int(args.threads))
        return scaling_command(args.out_dir, args.device, quick=args.quick)
    results = run_bench(quick=args.quick, device=args.device, out=args.json_out, threads=args.threads,
                        flare=getattr(args, "flare", None), flare_arch=getattr(args, "flare_arch", None))
    print(format_table(results), flush=True)
    print(json.dumps(results, separators=(",", ":")), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="fedrsclip", description=__doc__.split("\n", 1)[0])
    add_bench_command(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bench", *argv] if not argv or argv[0] != "bench" else argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

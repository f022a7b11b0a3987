"""The training step: this project's path (cached image features, the text encoder cut after the last EOT) against
the straightforward reference (the image encoder every step, the full 77-token text encoder); the same loss."""

from __future__ import annotations

import statistics
from typing import Any, Callable

from .common import ARCH, NWPU_CLASSES, UCMERCED_CLASSES, bench_config, progress, timed


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
        self.optimizer = torch.optim.SGD(learner.contexts, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        self.trainer.model.train()

    def _step(self) -> tuple[float, Any]:
        global_feats, tokens = self.feats_fn()
        text = self.text_fn()
        loss, _parts = self.trainer._loss(text, [(None, global_feats, tokens, self.labels)], None, None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad = self.trainer.model.learner.shared_ctx.grad.detach().clone()
        self.optimizer.step()
        return float(loss.detach()), grad

    def step(self) -> tuple[float, float, Any]:
        """(seconds, loss, gradient of the shared prompt) of one step."""
        seconds, (loss, grad) = timed(self._step, self.device)
        return seconds, loss, grad


def bench_step(
    backbone, images, labels, num_classes: int, settings: dict, arch: str = ARCH, cache: tuple[Any, Any] | None = None
) -> tuple[dict, dict]:
    """ms of one local step on both paths, the speed-up and the loss agreement, for `num_classes` classes.

    images: the preprocessed batch [B, 3, H, W]; cache: its (global, tokens) features as the project caches them
    (fp16, from features.extract_features), else computed here the same way. Returns (figures, the trainer's
    payload). Each path has its own copy of the same initial prompts and trains on the same batch. The paths are
    timed interleaved (one reference step, then `proj_per_ref` project steps), so a change of load on the machine
    hits both. A third, untimed path runs the project's code in lockstep with the reference on the very features
    the reference has just computed live: its losses must equal the reference's.
    """

    from ...trainer import PromptTrainer

    classnames = (
        UCMERCED_CLASSES
        if num_classes == 21
        else NWPU_CLASSES
        if num_classes == 45
        else [f"class {i}" for i in range(num_classes)]
    )
    cfg = bench_config(str(backbone.device), arch=arch)  # the backbone's own architecture
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
    reference = _StepPath(
        trainers[0], lambda: reference_text_features(ref_learner, backbone.model), reference_feats, labels, init
    )
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
    progress(
        f"step K={num_classes}: {repeats} reference steps (image encoder + {tokens_ref}-token text encoder), "
        f"each followed by {per_ref} project steps (cached features + {tokens_proj}-token text encoder)"
    )
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
        progress(
            f"step K={num_classes}: {i + 1}/{repeats}: reference {1e3 * ref_times[-1]:.0f} ms, project "
            f"{1e3 * statistics.median(proj_times[-per_ref:]):.0f} ms"
        )
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

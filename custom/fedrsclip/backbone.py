"""The frozen CLIP backbone: any open_clip model by name, with a pretrained tag or a local checkpoint file.

Never falls back to random weights: those need `model.random_init: true`, and the log says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

from .config import ModelConfig

log = logging.getLogger(__name__)

TINY_ARCH = "fedrsclip-tiny"  # a small CLIP config shipped with the package, for offline demos and tests


class BackboneError(RuntimeError):
    """The backbone cannot be built as configured; the message says how to fix it."""


def _register_package_configs() -> None:
    import open_clip

    if TINY_ARCH in open_clip.list_models():
        return
    folder = resources.files("fedrsclip") / "model_configs"
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            with resources.as_file(entry) as path:
                open_clip.add_model_config(path)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"model.device is {name!r} but CUDA is not available here; use auto or cpu")
    return device


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass
class Backbone:
    """A frozen open_clip model with its preprocessing, tokenizer and a fingerprint of its weights."""

    model: Any  # open_clip.CLIP
    preprocess: Callable
    tokenizer: Any
    device: torch.device
    fingerprint: str  # identifies architecture + weights; part of every feature-cache key
    description: str  # for logs and results: "ViT-B-16 (openai weights)" or "... RANDOM weights"

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def embed_dim(self) -> int:
        proj = self.model.text_projection
        return int(proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Mixed precision for the frozen encoders on CUDA; OT always runs in fp32."""
        return torch.float16 if self.device.type == "cuda" else None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global embeddings [B, E] and projected patch tokens [B, V, E] (after ln_post and the projection)."""
        visual = self.model.visual
        if not hasattr(visual, "output_tokens") or getattr(visual, "proj", None) is None:
            raise BackboneError(
                f"{self.description}: patch tokens are only supported for open_clip ViT image towers "
                "(choose a ViT-* model)"
            )
        images = images.to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            visual.output_tokens = True
            try:
                pooled, tokens = visual(images)
            finally:
                visual.output_tokens = False
            tokens = tokens @ visual.proj
        return pooled.float(), tokens.float()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return self.model.encode_text(tokens).float()


def _is_openai(cfg: ModelConfig) -> bool:
    if cfg.quick_gelu is not None:
        return cfg.quick_gelu
    return cfg.pretrained == "openai"


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Build the configured CLIP, frozen and in eval mode, on CUDA when present."""
    import open_clip

    _register_package_configs()
    if cfg.arch not in open_clip.list_models():
        raise BackboneError(
            f"model.arch {cfg.arch!r} is not an open_clip model; see open_clip.list_models() "
            f"(e.g. ViT-B-16, ViT-B-32, or {TINY_ARCH} for offline tests)"
        )
    device = resolve_device(cfg.device)
    quick_gelu = _is_openai(cfg)
    kwargs: dict[str, Any] = dict(force_quick_gelu=quick_gelu, device=device, pretrained_text=False)

    if cfg.random_init:
        if cfg.pretrained:
            raise BackboneError(
                f"model.random_init is true but model.pretrained is {cfg.pretrained!r}: choose one "
                "(set model.pretrained: null for random weights, or model.random_init: false)"
            )
        torch.manual_seed(cfg.init_seed)  # every site must build the same frozen random CLIP
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.arch, pretrained=None, **kwargs)
        fingerprint = f"{cfg.arch}|random|seed={cfg.init_seed}|quickgelu={quick_gelu}"
        description = f"{cfg.arch} with RANDOM weights (seed {cfg.init_seed}): not a pretrained CLIP"
        log.warning("Using a randomly initialised %s (model.random_init: true); accuracy is not meaningful "
                    "for real data", cfg.arch)
    else:
        pretrained = cfg.pretrained
        assert pretrained is not None  # validated
        path = Path(os.path.expanduser(pretrained))
        looks_like_path = path.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in pretrained
        if looks_like_path and not path.is_file():
            raise BackboneError(
                f"model.pretrained points to {path}, which does not exist: give the path of an open_clip "
                "checkpoint file (state_dict .pt/.bin/.safetensors)"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.arch, pretrained=str(path) if looks_like_path else pretrained, require_pretrained=True,
                cache_dir=cfg.cache_dir, **kwargs,
            )
        except Exception as exc:  # open_clip raises many kinds; all mean "weights not available"
            if looks_like_path:
                raise BackboneError(
                    f"cannot load checkpoint {path} into {cfg.arch}: {exc}. Check that the file is an open_clip "
                    "state dict for this architecture (model.arch)."
                ) from exc
            raise BackboneError(
                f"cannot get pretrained weights {cfg.arch}/{pretrained} ({type(exc).__name__}: {exc}). "
                "Without access to the Hugging Face hub, download the checkpoint once elsewhere, e.g. "
                f"python -c \"import open_clip; open_clip.create_model('{cfg.arch}', pretrained='{pretrained}', "
                "cache_dir='clip-weights')\", copy the open_clip_model.safetensors (or .bin) file here and set "
                "model.pretrained: /path/to/that/file. For an offline smoke run without weights use "
                f"model.arch: {TINY_ARCH}, model.pretrained: null, model.random_init: true."
            ) from exc
        if looks_like_path:
            fingerprint = f"{cfg.arch}|file={_file_digest(path)}|quickgelu={quick_gelu}"
            description = f"{cfg.arch} with weights from {path.name}"
        else:
            fingerprint = f"{cfg.arch}|tag={pretrained}|quickgelu={quick_gelu}"
            description = f"{cfg.arch} with {pretrained} weights"

    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    log.info("Backbone: %s on %s", description, device)
    return Backbone(model, preprocess, tokenizer, device, fingerprint, description)


def preprocess_signature(preprocess: Callable) -> str:
    """A stable text form of the image preprocessing, for cache keys."""
    return json.dumps(repr(preprocess))

"""The frozen CLIP backbone: any open_clip model by name, with a pretrained tag or a local checkpoint file.

Local files are read and recognised by `fedrsclip.checkpoints`; the activation (QuickGELU or GELU) is never a
guess: it comes from the tag, the recognised format, or model.quick_gelu.

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

from .checkpoints import CheckpointError, kps_length, read_checkpoint, stretch_state_dict
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
    quick_gelu: bool  # the activation the model was built with

    @property
    def context_length(self) -> int:
        """Text positions of the encoder: 77 for stock CLIP, 248 for Long-CLIP/LRSCLIP or after KPS."""
        return int(self.model.positional_embedding.shape[0])

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


CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}
UNKNOWN_ACTIVATION = (
    "Set model.quick_gelu: true if the weights are OpenAI CLIP's or were fine-tuned from them (QuickGELU), or "
    "model.quick_gelu: false if they were trained with open_clip's default GELU (LAION, DataComp, ... tags); the "
    "wrong one runs without an error but gives wrong features. The README's Backbones table lists the files "
    "recognised without it."
)


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" when a model is built without weights; ours are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _base_arch(arch: str) -> str:
    return arch.removesuffix("-quickgelu")


def _native_context(arch: str) -> int:
    import open_clip

    return int(open_clip.get_model_config(arch)["text_cfg"].get("context_length", 77))


def _chosen_quick_gelu(cfg: ModelConfig) -> bool | None:
    """The user's choice: model.quick_gelu, or a `-quickgelu` model.arch; None when neither says."""
    import open_clip

    arch_quick = bool(open_clip.get_model_config(cfg.arch).get("quick_gelu", False))
    if arch_quick and cfg.quick_gelu is False:
        raise BackboneError(f"model.arch {cfg.arch} builds QuickGELU but model.quick_gelu is false: use "
                            f"model.arch: {_base_arch(cfg.arch)} for GELU, or model.quick_gelu: true")
    return True if arch_quick else cfg.quick_gelu


def _stretch_wanted(cfg: ModelConfig, rows: int, native: int, what: str) -> bool:
    """Whether model.context_length asks for KPS on a `rows`-row table; an impossible length stops here."""
    target = cfg.context_length
    if target is None or target == rows:
        return False
    if rows == native and target == kps_length(native):
        return True
    choices = f"{rows}, or {kps_length(rows)} (KPS, as Long-CLIP)" if rows == native else f"{rows}"
    raise BackboneError(f"model.context_length: {target} is not possible for {what}, whose text encoder has {rows} "
                        f"positions: leave it unset or use {choices}")


def _instantiate(arch: str, quick_gelu: bool, context_length: int, state: dict[str, torch.Tensor],
                 source: str) -> tuple[Any, Callable]:
    """An open_clip model of `arch` at `context_length`, on the CPU, holding exactly `state`."""
    import open_clip

    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=None, force_quick_gelu=quick_gelu, force_context_length=context_length,
            pretrained_text=False, device="cpu")
    finally:
        root.removeFilter(quiet)
    computed = {name for name, _ in model.named_buffers()} - set(model.state_dict())  # e.g. attn_mask: not weights
    state = {k: v for k, v in state.items() if k not in computed}  # (TorchScript archives store them all)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:  # scalar in some files
        state = {**state, "logit_scale": state["logit_scale"].reshape(model.logit_scale.shape)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"cannot load {source} into {arch}: {str(exc).rstrip('.')}. Check that model.arch is "
                            "the architecture the weights were trained as (the README's Backbones table lists the "
                            "known files).") from exc
    return model, preprocess


def _stretched(model: Any, arch: str, quick_gelu: bool) -> Any:
    """The same CLIP with its text position table KPS-stretched (77 -> 248 rows)."""
    state = stretch_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    stretched, _ = _instantiate(arch, quick_gelu, int(state["positional_embedding"].shape[0]), state,
                                f"the KPS-stretched {arch}")
    return stretched


def _load_file(cfg: ModelConfig, path: Path, native: int) -> tuple[Any, Callable, bool, str]:
    """A local checkpoint: (model, preprocess, quick_gelu, what) with the activation never guessed."""
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise BackboneError(str(exc)) from exc
    chosen = _chosen_quick_gelu(cfg)
    if chosen is None and ckpt.quick_gelu is None:
        raise BackboneError(f"model.pretrained {path}: cannot tell whether these weights use QuickGELU or GELU, and "
                            f"the file does not say (not a recognised format). {UNKNOWN_ACTIVATION}")
    quick_gelu = ckpt.quick_gelu if chosen is None else chosen
    if ckpt.quick_gelu is not None and chosen is not None and chosen != ckpt.quick_gelu:
        log.warning("model.quick_gelu is %s, but %s is %s, which uses %s (%s)", chosen, path.name, ckpt.family,
                    "QuickGELU" if ckpt.quick_gelu else "GELU", ckpt.why)
    elif chosen is None:
        log.info("%s: %s, so QuickGELU is %s (%s)", path.name, ckpt.family, "on" if quick_gelu else "off", ckpt.why)
    if ckpt.arch is not None and _base_arch(ckpt.arch) != _base_arch(cfg.arch):
        raise BackboneError(f"{path.name} is the {ckpt.family} {ckpt.arch} checkpoint but model.arch is {cfg.arch}: "
                            f"set model.arch: {ckpt.arch}")
    state = ckpt.state_dict
    if _stretch_wanted(cfg, ckpt.context_length, native, path.name):
        state = stretch_state_dict(state)
        ckpt.notes.append(f"KPS: text positions {ckpt.context_length} -> {state['positional_embedding'].shape[0]}")
    for note in ckpt.notes:
        log.info("%s: %s", path.name, note)
    model, preprocess = _instantiate(cfg.arch, quick_gelu, int(state["positional_embedding"].shape[0]), state,
                                     f"checkpoint {path}")
    return model, preprocess, quick_gelu, ckpt.family


def _offline_help(cfg: ModelConfig, tag: str, quick_gelu: bool) -> str:
    return (
        "Without access to the Hugging Face hub, download the checkpoint once elsewhere, e.g. "
        f"python -c \"import open_clip; open_clip.create_model('{cfg.arch}', pretrained='{tag}', "
        "cache_dir='clip-weights')\", copy the open_clip_model.safetensors (or .bin) file here and set "
        f"model.pretrained: /path/to/that/file and model.quick_gelu: {str(quick_gelu).lower()} (these weights "
        f"{'use QuickGELU' if quick_gelu else 'use GELU'}; a bare file does not say which; copying the "
        "open_clip_config.json beside it does). For an offline smoke run without weights use "
        f"model.arch: {TINY_ARCH}, model.pretrained: null, model.random_init: true."
    )


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Build the configured CLIP, frozen and in eval mode, on CUDA when present.

    Weights: random (model.random_init), an open_clip pretrained tag, or a local file (`fedrsclip.checkpoints`:
    OpenAI, Long-CLIP/LRSCLIP with 248 text positions, RemoteCLIP, GeoRSCLIP, SkyCLIP, open_clip files).
    model.context_length: 248 on a 77-position CLIP applies Long-CLIP's KPS. Raises BackboneError with the fix
    for an unknown arch, a missing or unreadable file, an activation the file does not tell, offline tags.
    """
    import open_clip

    _register_package_configs()
    if cfg.arch not in open_clip.list_models():
        raise BackboneError(
            f"model.arch {cfg.arch!r} is not an open_clip model; see open_clip.list_models() "
            f"(e.g. ViT-B-16, ViT-B-32, or {TINY_ARCH} for offline tests)"
        )
    device = resolve_device(cfg.device)
    native = _native_context(cfg.arch)
    chosen = _chosen_quick_gelu(cfg)

    if cfg.random_init:
        if cfg.pretrained:
            raise BackboneError(
                f"model.random_init is true but model.pretrained is {cfg.pretrained!r}: choose one "
                "(set model.pretrained: null for random weights, or model.random_init: false)"
            )
        quick_gelu = bool(chosen)  # no weights to match: GELU unless asked
        stretch = _stretch_wanted(cfg, native, native, cfg.arch)
        torch.manual_seed(cfg.init_seed)  # every site must build the same frozen random CLIP
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.arch, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False)
        if stretch:
            model = _stretched(model, cfg.arch, quick_gelu)
        fingerprint = f"{cfg.arch}|random|seed={cfg.init_seed}|quickgelu={quick_gelu}"
        description = f"{cfg.arch} with RANDOM weights (seed {cfg.init_seed}): not a pretrained CLIP"
        log.warning("Using a randomly initialised %s (model.random_init: true); accuracy is not meaningful "
                    "for real data", cfg.arch)
    else:
        pretrained = cfg.pretrained
        assert pretrained is not None  # validated
        path = Path(os.path.expanduser(pretrained))
        if path.suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained:
            if not path.is_file():
                raise BackboneError(
                    f"model.pretrained points to {path}, which does not exist: give the path of a CLIP "
                    "checkpoint file (state_dict .pt/.bin/.safetensors, or an OpenAI CLIP archive)"
                )
            model, preprocess, quick_gelu, family = _load_file(cfg, path, native)
            fingerprint = f"{cfg.arch}|file={_file_digest(path)}|quickgelu={quick_gelu}"
            description = f"{cfg.arch} with weights from {path.name} ({family})"
        else:
            tag_cfg = open_clip.get_pretrained_cfg(cfg.arch, pretrained) or {}
            quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if chosen is None else chosen
            stretch = _stretch_wanted(cfg, native, native, f"{cfg.arch}/{pretrained}")  # before any download
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    cfg.arch, pretrained=pretrained, require_pretrained=True, cache_dir=cfg.cache_dir,
                    force_quick_gelu=quick_gelu, pretrained_text=False,
                )
            except Exception as exc:  # open_clip raises many kinds; all mean "weights not available"
                raise BackboneError(f"cannot get pretrained weights {cfg.arch}/{pretrained} "
                                    f"({type(exc).__name__}: {exc}). {_offline_help(cfg, pretrained, quick_gelu)}"
                                    ) from exc
            if stretch:
                model = _stretched(model, cfg.arch, quick_gelu)
            fingerprint = f"{cfg.arch}|tag={pretrained}|quickgelu={quick_gelu}"
            description = f"{cfg.arch} with {pretrained} weights"

    context_length = int(model.positional_embedding.shape[0])
    if context_length != native:  # another text tower than the stock one: the fingerprint names the model
        fingerprint += f"|ctx={context_length}"
        description += f", {context_length} text positions"
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(cfg.arch, context_length=context_length)
    log.info("Backbone: %s on %s (QuickGELU %s)", description, device, "on" if quick_gelu else "off")
    return Backbone(model, preprocess, tokenizer, device, fingerprint, description, quick_gelu)


def preprocess_signature(preprocess: Callable) -> str:
    """A stable text form of the image preprocessing, for cache keys."""
    return json.dumps(repr(preprocess))

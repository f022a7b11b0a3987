"""The frozen CLIP backbone: any open_clip model by name, with a pretrained tag or a local checkpoint file.

Local files are read and recognised by `fedrsclip.checkpoints`; the activation (QuickGELU or GELU) is never a
guess: it comes from the tag, the recognised format, or model.quick_gelu.

Never falls back to random weights: those need `model.random_init: true`, and the log says so.

A site needs the image tower only until its features are cached (`open_backbone`): a cold start loads the whole
CLIP, and once the features are extracted (`Backbone.release_image_tower`) keeps only its text side and writes it
to a text tower file (`fedrsclip.text_tower`); a warm start opens that file alone, memory-mapped, without building
the CLIP or importing open_clip, and loads the image tower only if an image has to be encoded after all.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoints import CheckpointError, kps_length, read_checkpoint, stretch_state_dict
from .config import ModelConfig
from .data.digests import DigestMemo, hash_file
from .text_tower import (
    TOWER_FORMAT,
    MemoTokenizer,
    TextTowerError,
    TextTowerSpec,
    check_same_text,
    clip_tokenizer,
    empty_text_tower,
    open_text_tower,
    save_text_tower,
    spec_of,
    text_tower_of,
)

log = logging.getLogger(__name__)

TINY_ARCH = "fedrsclip-tiny"  # a small CLIP config shipped with the package, for offline demos and tests
TOWER_FOLDER = "text-towers"  # under data.cache_dir: one text tower file per backbone recipe (`tower_recipe`)
_PRECISION = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass
class Backbone:
    """A frozen open_clip model with its preprocessing, tokenizer and a fingerprint of its weights.

    `model` is the whole open_clip CLIP, or only its text side (a `fedrsclip.text_tower.TextTower`, same attribute
    names) after `release_image_tower` or on a warm start; then `preprocess` is None and the image tower is loaded
    again by `load_image_tower` through `reload`, when there is one.
    """

    model: Any  # open_clip.CLIP, or a TextTower
    preprocess: Callable | None  # None without the image tower
    tokenizer: Any
    device: torch.device
    fingerprint: str  # identifies architecture + weights; part of every feature-cache key
    description: str  # for logs and results: "ViT-B-16 (openai weights)" or "... RANDOM weights"
    quick_gelu: bool  # the activation the model was built with
    preprocess_key: str = ""  # preprocess_signature(preprocess), kept without the image tower: part of the cache key
    text_precision: str = "fp32"  # model.text_precision: the prompt-learning text encoder's autocast on CUDA
    tower_file: Path | None = None  # where this backbone's text tower is (or is to be) kept
    recipe: str | None = None  # what the text tower file is keyed by (`tower_recipe`)
    tokenizer_settings: dict | None = None  # how `fedrsclip.text_tower.clip_tokenizer` rebuilds `tokenizer`
    reload: Callable[[], "Backbone"] | None = field(default=None, repr=False)  # the whole CLIP, on demand
    _text: Any = field(default=None, repr=False)  # the text side in use while a reloaded image tower is held

    def __post_init__(self) -> None:
        if not self.preprocess_key and self.preprocess is not None:
            self.preprocess_key = preprocess_signature(self.preprocess)

    @property
    def weights(self) -> str:
        """What the weights are, as known from how they were loaded (never from a file's name): "random"
        (model.random_init), "tag:<open_clip tag>" or "file:<sha256 prefix of the checkpoint's content>"."""
        kind = self.fingerprint.split("|")[1]
        key, _, value = kind.partition("=")
        return "random" if key == "random" else f"{key}:{value}"

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

    @property
    def text_amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype of the prompt-learning text encoder (model.text_precision): None (fp32) on the CPU."""
        return _PRECISION[self.text_precision] if self.device.type == "cuda" else None

    @property
    def has_image_tower(self) -> bool:
        return hasattr(self.model, "visual")

    def load_image_tower(self) -> None:
        """Make sure the image tower is here: on a warm start it is loaded now (the whole CLIP, through `reload`).

        Raises BackboneError when it was released and cannot be reloaded, or when the reloaded CLIP is not the one
        the text tower file describes.
        """
        if self.has_image_tower:
            return
        if self.reload is None:
            raise BackboneError(
                f"{self.description}: the image tower was released (only the text side is kept); "
                "build the backbone with load_backbone to encode images"
            )
        full = self.reload()
        if (full.fingerprint, full.preprocess_key) != (self.fingerprint, self.preprocess_key):
            raise BackboneError(
                f"the text tower file {self.tower_file} describes {self.fingerprint}, but the "
                f"configured model loads as {full.fingerprint} (or preprocesses otherwise): delete "
                "the file; it is rewritten at the next start"
            )
        self._text = self.model  # training keeps using the text side it was given
        self.model, self.preprocess = full.model, full.preprocess

    def release_image_tower(self) -> None:
        """Keep only the text side of the CLIP and free the image tower (and the preprocessing).

        The first time for a backbone recipe (`tower_file` set and the model just loaded whole), the text side is
        written to `tower_file` (a later start opens it instead of the whole CLIP) and, on the CPU, reopened from it,
        memory-mapped. A text tower that cannot be written is kept in memory, with a warning.
        """
        if not self.has_image_tower:
            return
        clip, self.preprocess = self.model, None
        del clip.visual  # freed before the text tower is written (encode_text does not use it)
        gc.collect()
        if self._text is not None:
            self.model, self._text = self._text, None
        else:
            self.model = self._write_text_tower(clip)
        del clip
        gc.collect()
        _return_free_memory()
        log.info("%s: image tower released; the text side stays", self.description)

    def _write_text_tower(self, clip: Any) -> Any:
        text = text_tower_of(clip)
        if self.tower_file is None:
            return text
        try:
            spec = spec_of(clip, self.quick_gelu)
            _check_tokenizer(self.tokenizer, self.tokenizer_settings)
            existed = self.tower_file.is_file()  # and is not usable, if `shared` is None: then it is replaced
            shared = self._tower_written_meanwhile(clip, spec)
            if shared is None:
                rebuilt = empty_text_tower(spec)
                rebuilt.load_state_dict(text.state_dict(), strict=True, assign=True)
                rebuilt.requires_grad_(False)  # frozen as the CLIP is: attention takes another kernel otherwise
                rebuilt.attn_mask = rebuilt.attn_mask.to(self.device)
                check_same_text(rebuilt, clip, spec)
                meta = {
                    "recipe": self.recipe,
                    "fingerprint": self.fingerprint,
                    "description": self.description,
                    "quick_gelu": self.quick_gelu,
                    "preprocess": self.preprocess_key,
                    "tokenizer": self.tokenizer_settings,
                }
                if not save_text_tower(self.tower_file, text, spec, meta, replace=existed):
                    shared = self._tower_written_meanwhile(clip, spec)  # another site published first: use theirs
                    if shared is None:  # unless it does not give this CLIP's text features
                        save_text_tower(self.tower_file, text, spec, meta)
        except (TextTowerError, OSError) as exc:
            log.warning(
                "%s: no text tower file (%s); the next start of this site loads the whole CLIP again",
                self.description,
                exc,
            )
            return text
        self.tokenizer = MemoTokenizer(self.tokenizer_settings, token_memo_path(self.tower_file), self.tokenizer)
        if shared is not None:
            log.info(
                "%s: text tower %s was written by another process sharing this cache: using it",
                self.description,
                self.tower_file,
            )
            return shared if self.device.type == "cpu" else text
        log.info("%s: text tower written to %s for the next start", self.description, self.tower_file)
        if self.device.type != "cpu":
            return text
        try:  # the same weights, now memory-mapped: shared with every process that opens the file
            return open_text_tower(self.tower_file, self.device)[0]
        except TextTowerError as exc:
            log.warning("%s; the text side stays in memory", exc)
            return text

    def _tower_written_meanwhile(self, clip: Any, spec: TextTowerSpec) -> Any:
        """The text tower file another process (a site sharing this cache folder) wrote since this backbone was
        opened, when it is this recipe's and gives this CLIP's text features; else None (the file is (re)written).

        Not replacing it keeps one file, so every process that opens it shares its pages (a rename would give the
        later processes another inode than the earlier ones map). Sites that find no file publish theirs with
        `text_tower.publish_once`: of several publishing at once one wins, and the others use its file."""
        assert self.tower_file is not None
        if not self.tower_file.is_file():
            return None
        try:
            tower, meta = open_text_tower(self.tower_file, self.device)
            if meta.get("recipe") != self.recipe:
                return None
            check_same_text(tower, clip, spec)
        except TextTowerError as exc:
            log.warning("%s: rewriting it", exc)
            return None
        return tower

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global embeddings [B, E] and projected patch tokens [B, V, E] (after ln_post and the projection)."""
        self.load_image_tower()
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
        raise BackboneError(
            f"model.arch {cfg.arch} builds QuickGELU but model.quick_gelu is false: use "
            f"model.arch: {_base_arch(cfg.arch)} for GELU, or model.quick_gelu: true"
        )
    return True if arch_quick else cfg.quick_gelu


def _stretch_wanted(cfg: ModelConfig, rows: int, native: int, what: str) -> bool:
    """Whether model.context_length asks for KPS on a `rows`-row table; an impossible length stops here."""
    target = cfg.context_length
    if target is None or target == rows:
        return False
    if rows == native and target == kps_length(native):
        return True
    choices = f"{rows}, or {kps_length(rows)} (KPS, as Long-CLIP)" if rows == native else f"{rows}"
    raise BackboneError(
        f"model.context_length: {target} is not possible for {what}, whose text encoder has {rows} "
        f"positions: leave it unset or use {choices}"
    )


def _instantiate(
    arch: str, quick_gelu: bool, context_length: int, state: dict[str, torch.Tensor], source: str
) -> tuple[Any, Callable]:
    """An open_clip model of `arch` at `context_length`, on the CPU, holding exactly `state`."""
    import open_clip

    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            force_context_length=context_length,
            pretrained_text=False,
            device="cpu",
        )
    finally:
        root.removeFilter(quiet)
    computed = {name for name, _ in model.named_buffers()} - set(model.state_dict())  # e.g. attn_mask: not weights
    state = {k: v for k, v in state.items() if k not in computed}  # (TorchScript archives store them all)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:  # scalar in some files
        state = {**state, "logit_scale": state["logit_scale"].reshape(model.logit_scale.shape)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(
            f"cannot load {source} into {arch}: {str(exc).rstrip('.')}. Check that model.arch is "
            "the architecture the weights were trained as (the README's Backbones table lists the "
            "known files)."
        ) from exc
    return model, preprocess


def _stretched(model: Any, arch: str, quick_gelu: bool) -> Any:
    """The same CLIP with its text position table KPS-stretched (77 -> 248 rows)."""
    state = stretch_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    stretched, _ = _instantiate(
        arch, quick_gelu, int(state["positional_embedding"].shape[0]), state, f"the KPS-stretched {arch}"
    )
    return stretched


def _load_file(cfg: ModelConfig, path: Path, native: int) -> tuple[Any, Callable, bool, str]:
    """A local checkpoint: (model, preprocess, quick_gelu, what) with the activation never guessed."""
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise BackboneError(str(exc)) from exc
    chosen = _chosen_quick_gelu(cfg)
    if chosen is None and ckpt.quick_gelu is None:
        raise BackboneError(
            f"model.pretrained {path}: cannot tell whether these weights use QuickGELU or GELU, and "
            f"the file does not say (not a recognised format). {UNKNOWN_ACTIVATION}"
        )
    quick_gelu = ckpt.quick_gelu if chosen is None else chosen
    if ckpt.quick_gelu is not None and chosen is not None and chosen != ckpt.quick_gelu:
        log.warning(
            "model.quick_gelu is %s, but %s is %s, which uses %s (%s)",
            chosen,
            path.name,
            ckpt.family,
            "QuickGELU" if ckpt.quick_gelu else "GELU",
            ckpt.why,
        )
    elif chosen is None:
        log.info("%s: %s, so QuickGELU is %s (%s)", path.name, ckpt.family, "on" if quick_gelu else "off", ckpt.why)
    if ckpt.arch is not None and _base_arch(ckpt.arch) != _base_arch(cfg.arch):
        raise BackboneError(
            f"{path.name} is the {ckpt.family} {ckpt.arch} checkpoint but model.arch is {cfg.arch}: "
            f"set model.arch: {ckpt.arch}"
        )
    state = ckpt.state_dict
    if _stretch_wanted(cfg, ckpt.context_length, native, path.name):
        state = stretch_state_dict(state)
        ckpt.notes.append(f"KPS: text positions {ckpt.context_length} -> {state['positional_embedding'].shape[0]}")
    for note in ckpt.notes:
        log.info("%s: %s", path.name, note)
    model, preprocess = _instantiate(
        cfg.arch, quick_gelu, int(state["positional_embedding"].shape[0]), state, f"checkpoint {path}"
    )
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


def load_backbone(cfg: ModelConfig, memo: DigestMemo | None = None) -> Backbone:
    """Build the configured CLIP, frozen and in eval mode, on CUDA when present.

    memo: remembers a checkpoint file's digest (part of the fingerprint) so that an unchanged file is hashed once.

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
            cfg.arch, pretrained=None, force_quick_gelu=quick_gelu, pretrained_text=False
        )
        if stretch:
            model = _stretched(model, cfg.arch, quick_gelu)
        fingerprint = f"{cfg.arch}|random|seed={cfg.init_seed}|quickgelu={quick_gelu}"
        description = f"{cfg.arch} with RANDOM weights (seed {cfg.init_seed}): not a pretrained CLIP"
        _warn_random(cfg)
    else:
        pretrained = cfg.pretrained
        assert pretrained is not None  # validated
        path = Path(os.path.expanduser(pretrained))
        if _is_file_setting(pretrained):
            if not path.is_file():
                raise BackboneError(
                    f"model.pretrained points to {path}, which does not exist: give the path of a CLIP "
                    "checkpoint file (state_dict .pt/.bin/.safetensors, or an OpenAI CLIP archive)"
                )
            model, preprocess, quick_gelu, family = _load_file(cfg, path, native)
            digest = (memo or DigestMemo(None)).file_digest(path)[:16]
            fingerprint = f"{cfg.arch}|file={digest}|quickgelu={quick_gelu}"
            description = f"{cfg.arch} with weights from {path.name} ({family})"
        else:
            tag_cfg = open_clip.get_pretrained_cfg(cfg.arch, pretrained) or {}
            quick_gelu = bool(tag_cfg.get("quick_gelu", False)) if chosen is None else chosen
            stretch = _stretch_wanted(cfg, native, native, f"{cfg.arch}/{pretrained}")  # before any download
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    cfg.arch,
                    pretrained=pretrained,
                    require_pretrained=True,
                    cache_dir=cfg.cache_dir,
                    force_quick_gelu=quick_gelu,
                    pretrained_text=False,
                )
            except Exception as exc:  # open_clip raises many kinds; all mean "weights not available"
                raise BackboneError(
                    f"cannot get pretrained weights {cfg.arch}/{pretrained} "
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
    tokenizer_settings = {
        "context_length": context_length,
        "kwargs": open_clip.get_model_config(cfg.arch)["text_cfg"].get("tokenizer_kwargs") or {},
        "sot": getattr(tokenizer, "sot_token_id", None),
        "eot": getattr(tokenizer, "eot_token_id", None),
    }
    log.info("Backbone: %s on %s (QuickGELU %s)", description, device, "on" if quick_gelu else "off")
    return Backbone(
        model,
        preprocess,
        tokenizer,
        device,
        fingerprint,
        description,
        quick_gelu,
        text_precision=_text_precision(cfg, device),
        tokenizer_settings=tokenizer_settings,
    )


def load_remembered(cfg: ModelConfig, cache_dir: str | Path) -> Backbone:
    """`load_backbone(cfg)` with a checkpoint file's digest remembered in `<cache_dir>/file-digests.json`, the memo
    `open_backbone` and the feature caches keep: an unchanged file is hashed once, not at every run (a ViT-B/16
    file is 600 MB). For the in-process runner's one CLIP shared by every site."""
    memo = DigestMemo(cache_dir)
    backbone = load_backbone(cfg, memo)
    memo.save()
    return backbone


def _return_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps freed memory for reuse): the image tower's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by this process instead
        log.debug("malloc_trim is not available here")


def _warn_random(cfg: ModelConfig) -> None:
    log.warning(
        "Using a randomly initialised %s (model.random_init: true); accuracy is not meaningful for real data", cfg.arch
    )


def _text_precision(cfg: ModelConfig, device: torch.device) -> str:
    if cfg.text_precision != "fp32" and device.type != "cuda":
        log.warning(
            "model.text_precision is %s, but the text encoder runs on %s: it runs in fp32 there",
            cfg.text_precision,
            device,
        )
    return cfg.text_precision


def _check_tokenizer(tokenizer: Any, settings: dict | None) -> None:
    """TextTowerError unless `clip_tokenizer(settings)`, what a warm start uses, is the model's own tokenizer."""
    if type(tokenizer).__name__ != "SimpleTokenizer" or settings is None:
        raise TextTowerError(f"its tokenizer is {type(tokenizer).__name__}, not CLIP's BPE tokenizer")
    probe = ["a satellite photo of a dense_residential area.", "Überführung 2,048 \u00e9t\u00e9 '#1!"]
    rebuilt = clip_tokenizer(settings["context_length"], settings["kwargs"])
    if not torch.equal(rebuilt(probe), tokenizer(probe)):
        raise TextTowerError("its tokenizer is not the one open_clip's SimpleTokenizer gives with these settings")


def _package_config(arch: str) -> bytes:
    """The package's own model config of `arch` (fedrsclip-tiny), if it is one: part of a tower recipe."""
    entry = resources.files("fedrsclip") / "model_configs" / f"{arch}.json"
    return entry.read_bytes() if entry.is_file() else b""


def tower_recipe(cfg: ModelConfig, memo: DigestMemo) -> str | None:
    """sha256 of everything that decides what `load_backbone(cfg)` builds, computed without building it.

    Covers the model settings (arch, weights, seed, activation, context length), the versions of open_clip and torch,
    the package's own model config and, for a checkpoint file, its path, its content (remembered in `memo`) and the
    open_clip_config.json beside it, which `fedrsclip.checkpoints` reads. None when the file is missing (loading
    then stops with the error).
    """
    parts: dict[str, Any] = {
        "format": TOWER_FORMAT,
        "open_clip": metadata.version("open_clip_torch"),
        "torch": torch.__version__,
        "arch": cfg.arch,
        "random_init": cfg.random_init,
        "init_seed": cfg.init_seed if cfg.random_init else None,
        "pretrained": cfg.pretrained,
        "quick_gelu": cfg.quick_gelu,
        "context_length": cfg.context_length,
        "package_config": hashlib.sha256(_package_config(cfg.arch)).hexdigest(),
    }
    if not cfg.random_init and cfg.pretrained and _is_file_setting(cfg.pretrained):
        path = Path(os.path.expanduser(cfg.pretrained)).resolve()
        if not path.is_file():
            return None
        hub = path.parent / "open_clip_config.json"
        parts.update(
            pretrained=str(path), file=memo.file_digest(path), hub_config=hash_file(hub) if hub.is_file() else None
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _is_file_setting(pretrained: str) -> bool:
    """model.pretrained names a file (rather than an open_clip tag)."""
    return Path(pretrained).suffix in CHECKPOINT_SUFFIXES or os.sep in pretrained


def open_backbone(cfg: ModelConfig, cache_dir: str | Path) -> Backbone:
    """The backbone of a site whose features live in `cache_dir`: only the text side when it can.

    Warm (a text tower file for this recipe, `tower_recipe`, in `<cache_dir>/text-towers/`): the text tower,
    memory-mapped, and the fingerprint and preprocessing signature the file records, without building the CLIP or
    importing open_clip; `load_image_tower` loads the whole CLIP if an image has to be encoded after all.
    Cold: `load_backbone(cfg)`; `release_image_tower` then writes the file. An unreadable file is ignored with a
    warning and rewritten. Raises what `load_backbone` raises.
    """
    memo = DigestMemo(cache_dir)  # remembers the checkpoint file's digest: a warm start does not hash it
    recipe = tower_recipe(cfg, memo)
    memo.save()
    path = Path(cache_dir) / TOWER_FOLDER / f"{_base_arch(cfg.arch)}-{recipe[:16]}.safetensors" if recipe else None
    if path is not None and path.is_file():
        try:
            return _warm_backbone(cfg, path, recipe, memo)
        except TextTowerError as exc:
            log.warning("%s: loading the whole CLIP instead; the file is rewritten after this start", exc)
    backbone = load_backbone(cfg, memo)
    memo.save()
    backbone.tower_file, backbone.recipe = path, recipe
    backbone.reload = lambda: load_backbone(cfg, memo)  # after release_image_tower, should an image come later
    return backbone


def token_memo_path(tower_file: Path) -> Path:
    """The token memo (`fedrsclip.text_tower.MemoTokenizer`) that belongs to a text tower file."""
    return tower_file.with_suffix(".tokens.json")


def _warm_backbone(cfg: ModelConfig, path: Path, recipe: str, memo: DigestMemo) -> Backbone:
    device = resolve_device(cfg.device)
    tower, meta = open_text_tower(path, device)
    if meta.get("recipe") != recipe:
        raise TextTowerError(f"text tower file {path} was written for another model configuration")
    try:
        tokenizer = MemoTokenizer(meta["tokenizer"], token_memo_path(path))
        backbone = Backbone(
            tower,
            None,
            tokenizer,
            device,
            meta["fingerprint"],
            meta["description"],
            bool(meta["quick_gelu"]),
            preprocess_key=meta["preprocess"],
            text_precision=_text_precision(cfg, device),
            tower_file=path,
            recipe=recipe,
            reload=lambda: load_backbone(cfg, memo),
            tokenizer_settings=meta["tokenizer"],
        )
    except (KeyError, TypeError) as exc:
        raise TextTowerError(f"text tower file {path} lacks {exc}") from exc
    if cfg.random_init:
        _warn_random(cfg)
    log.info("Backbone: %s on %s, text side only (memory-mapped from %s)", backbone.description, device, path)
    return backbone


def preprocess_signature(preprocess: Callable) -> str:
    """A stable text form of the image preprocessing, for cache keys."""
    return json.dumps(repr(preprocess))

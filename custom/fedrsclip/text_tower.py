"""The text side of a frozen CLIP on its own: built without the image tower and without importing open_clip, its
weights memory-mapped from a compact safetensors file that a site writes once.

Prompt learning and zero-shot scoring need only the text tower (token embedding, positional embedding, transformer,
ln_final, text projection, causal mask) and the logit scale once a site's image features are cached. open_clip has
no entry point that builds them without its package import, which pulls in torchvision, timm and torch._dynamo
(`python -X importtime -c "import open_clip"`: about 4 s on top of torch's 2 s on 2 cores, and +200 MB resident).
So `TextTower` below is built here, in open_clip's key layout and with the same torch operations in the same order
as open_clip's text tower (pre-LN residual blocks of batch-first `nn.MultiheadAttention` and an MLP, an additive
causal mask, pooling at the EOT token, the projection); `check_same_text` compares it with the CLIP it was taken
from before its file is written, so a model whose text tower differs from this layout is never saved as one.

The file holds the tensors and, as safetensors metadata, the tower's shape (`TextTowerSpec`) and what the site needs
to trust its caches without the full model (`fedrsclip.backbone.open_backbone`): the backbone fingerprint and the
preprocessing signature.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import secrets
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

TOWER_FORMAT = 1  # of the file's tensors and metadata
META_KEY = "fedrsclip"


class TextTowerError(RuntimeError):
    """A text tower cannot be taken from a model, or a text tower file cannot be used; the message says why."""


@dataclass(frozen=True)
class TextTowerSpec:
    """The shape of a standard CLIP text tower (open_clip's `TextTransformer` with its default options)."""

    vocab_size: int
    context_length: int
    width: int
    heads: int
    layers: int
    mlp_width: int
    embed_dim: int
    quick_gelu: bool
    ln_eps: float = 1e-5


class _LayerNorm(nn.LayerNorm):
    """LayerNorm that returns the input's dtype (under autocast the statistics run in fp32), as open_clip's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class _QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# Weights of an `empty_text_tower` come from a file or a model (load_state_dict with assign=True): random
# initialisation would only cost time and touch memory (the meta device is no way out: initialising meta tensors
# imports torch._dynamo, seconds of a warm start).
class _EmptyLinear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class _EmptyAttention(nn.MultiheadAttention):
    def _reset_parameters(self) -> None:
        pass


class _Block(nn.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, spec: TextTowerSpec):
        super().__init__()
        self.ln_1 = _LayerNorm(spec.width, eps=spec.ln_eps)
        self.attn = _EmptyAttention(spec.width, spec.heads, batch_first=True)
        self.ln_2 = _LayerNorm(spec.width, eps=spec.ln_eps)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", _EmptyLinear(spec.width, spec.mlp_width)),
                    ("gelu", _QuickGELU() if spec.quick_gelu else nn.GELU()),
                    ("c_proj", _EmptyLinear(spec.mlp_width, spec.width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        mask = attn_mask.to(h.dtype) if attn_mask is not None else None
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]  # one tensor for q, k, v: the packed path
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, spec: TextTowerSpec):
        super().__init__()
        self.resblocks = nn.ModuleList([_Block(spec) for _ in range(spec.layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, L, W] (batch first) -> [N, L, W]."""
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


def causal_mask(length: int) -> torch.Tensor:
    """Additive causal mask [L, L]: -inf above the diagonal, 0 elsewhere."""
    return torch.full((length, length), float("-inf")).triu_(1)


class TextTower(nn.Module):
    """A CLIP's text side with the attribute names of open_clip's `CLIP`, so `fedrsclip.prompts` takes either.

    Holds either modules built from a `TextTowerSpec` (`empty_text_tower`, `open_text_tower`) or the very modules of
    an open_clip CLIP (`text_tower_of`, no copy).
    """

    def __init__(
        self,
        token_embedding: nn.Embedding,
        positional_embedding: nn.Parameter,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: nn.Parameter,
        attn_mask: torch.Tensor,
        logit_scale: nn.Parameter,
    ):
        super().__init__()
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.logit_scale = logit_scale

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, context_length] -> text features [N, E], pooled at the EOT (largest) token id."""
        dtype = self.transformer.resblocks[0].mlp.c_fc.weight.dtype  # open_clip's cast dtype
        x = self.token_embedding(tokens).to(dtype)
        x = x + self.positional_embedding.to(dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.text_projection


def empty_text_tower(spec: TextTowerSpec) -> TextTower:
    """A text tower of `spec` in eval mode, on the CPU, its weights uninitialised (`torch.empty`): to be given weights
    with `load_state_dict(..., assign=True)`, which replaces them without copying."""
    tower = TextTower(
        nn.Embedding(spec.vocab_size, spec.width, _weight=torch.empty(spec.vocab_size, spec.width)),
        nn.Parameter(torch.empty(spec.context_length, spec.width)),
        _Transformer(spec),
        _LayerNorm(spec.width, eps=spec.ln_eps),
        nn.Parameter(torch.empty(spec.width, spec.embed_dim)),
        causal_mask(spec.context_length),
        nn.Parameter(torch.empty(())),
    )
    return tower.eval()


_STANDARD_BLOCK = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")  # open_clip's ResidualAttentionBlock, no cross-attn


def spec_of(clip: nn.Module, quick_gelu: bool) -> TextTowerSpec:
    """The `TextTowerSpec` of an open_clip CLIP's text side; TextTowerError when it is not the standard layout
    (custom text towers, Hugging Face text models, layer scale, another pooling or projection, ...)."""

    def refuse(why: str) -> TextTowerError:
        return TextTowerError(f"the text tower of this {type(clip).__name__} is not a standard CLIP one: {why}")

    if type(clip).__name__ != "CLIP":
        raise refuse("only open_clip's CLIP class is supported")
    if getattr(clip, "text_pool_type", "argmax") != "argmax" or getattr(clip, "attn_mask", None) is None:
        raise refuse("it does not pool at the EOT token under a causal mask")
    if not isinstance(clip.text_projection, nn.Parameter) or clip.text_projection.ndim != 2:
        raise refuse("its projection is not a plain matrix")
    blocks = list(clip.transformer.resblocks)
    if not getattr(clip.transformer, "batch_first", True):
        raise refuse("its transformer is not batch-first")
    norms = [clip.ln_final]
    for block in blocks:
        parts = dict(block.named_children())
        if (
            type(block).__name__ != "ResidualAttentionBlock"
            or list(parts) != list(_STANDARD_BLOCK)
            or not all(isinstance(parts[k], nn.Identity) for k in ("ls_1", "ls_2"))
            or list(block.mlp._modules) != ["c_fc", "gelu", "c_proj"]
        ):
            raise refuse(f"a block has other parts ({', '.join(parts)}; mlp: {', '.join(block.mlp._modules)})")
        act = block.mlp.gelu
        plain_gelu = type(act) is nn.GELU and act.approximate == "none"
        if not (type(act).__name__ == "QuickGELU" if quick_gelu else plain_gelu):
            raise refuse(f"its activation is {type(act).__name__}, not {'QuickGELU' if quick_gelu else 'GELU'}")
        norms += [block.ln_1, block.ln_2]
    if any(type(norm).__name__ != "LayerNorm" for norm in norms):  # open_clip's (casts back), not LayerNormFp32
        raise refuse(f"its layer norms are {type(norms[-1]).__name__}")
    if clip.logit_scale.ndim != 0:
        raise refuse("its logit scale is not a scalar")
    if any(p.dtype != torch.float32 for p in text_tower_of(clip).parameters()):
        raise refuse("its weights are not float32")
    return TextTowerSpec(
        vocab_size=int(clip.token_embedding.weight.shape[0]),
        context_length=int(clip.positional_embedding.shape[0]),
        width=int(clip.token_embedding.weight.shape[1]),
        heads=int(blocks[0].attn.num_heads),
        layers=len(blocks),
        mlp_width=int(blocks[0].mlp.c_fc.out_features),
        embed_dim=int(clip.text_projection.shape[1]),
        quick_gelu=quick_gelu,
        ln_eps=float(clip.ln_final.eps),
    )


def text_tower_of(clip: nn.Module) -> TextTower:
    """A TextTower holding the text modules of an open_clip CLIP (shared, not copied); the image tower is not kept."""
    return TextTower(
        clip.token_embedding,
        clip.positional_embedding,
        clip.transformer,
        clip.ln_final,
        clip.text_projection,
        clip.attn_mask,
        clip.logit_scale,
    )


def _probe_tokens(spec: TextTowerSpec) -> torch.Tensor:
    """Two token sequences that exercise every position: random ids, the largest id last (the EOT)."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, spec.vocab_size - 1, (2, spec.context_length), generator=gen)
    tokens[0, spec.context_length // 3] = spec.vocab_size - 1
    tokens[1, -1] = spec.vocab_size - 1
    return tokens


@torch.no_grad()
def check_same_text(tower: TextTower, clip: nn.Module, spec: TextTowerSpec, atol: float = 1e-6) -> None:
    """TextTowerError unless `tower` gives the CLIP's own `encode_text` (within `atol`) on probe sequences."""
    tokens = _probe_tokens(spec).to(clip.token_embedding.weight.device)
    ours, theirs = tower.encode_text(tokens), clip.encode_text(tokens)
    diff = float((ours - theirs).abs().max())
    if not diff <= atol:
        raise TextTowerError(f"the rebuilt text tower differs from the model's own by {diff:.3g} (> {atol})")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (name, dtype, shape, bytes): safetensors keeps no checksum of its own, so a flipped
    byte in a weight would load silently."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        flat = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensors[name].shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def save_text_tower(
    path: str | Path, tower: TextTower, spec: TextTowerSpec, meta: dict[str, Any], replace: bool = True
) -> bool:
    """Write the tower's tensors (fp32, CPU), their checksum and `spec` + `meta` (JSON-able) as one safetensors file,
    atomically (a reader sees no file or the whole file).

    replace=False: only where no file is at `path` yet (`publish_once`), so a file another process (a site sharing
    the cache folder) put there first is never replaced. Returns whether `path` now holds this call's file.
    """
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous() for name, value in tower.state_dict().items()}
    header = {
        META_KEY: json.dumps({"format": TOWER_FORMAT, "spec": asdict(spec), "sha256": tensors_digest(tensors), **meta})
    }
    data = save(tensors, metadata=header)
    if not replace:
        return publish_once(path, data)
    atomic_write(path, lambda handle: handle.write(data))
    return True


def publish_once(path: str | Path, data: bytes) -> bool:
    """Put `data` at `path` unless a file is there: True when this call put it there, False when one was there first.

    The data is written complete under a name of its own (`fedrsclip.atomic.atomic_write`), then hard-linked to
    `path`: link(2) fails where `path` exists, so of several processes publishing at once exactly one wins and the
    file is never replaced (a rename would replace it, and processes that had mapped the first file would hold
    another inode than later ones: pages not shared). Where the file system has no hard links, the file is renamed
    into place instead (atomic still, but it may replace one written meanwhile), with a warning.
    """
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.staged")
    atomic_write(staged, lambda handle: handle.write(data))
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # no hard links here (some network or FAT file systems)
        log.warning("%s: no hard link (%s); renamed into place, which may replace a file written meanwhile", path, exc)
        os.replace(staged, path)
        return True
    finally:
        staged.unlink(missing_ok=True)


def read_tower_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a text tower file (its "spec" and what the writer stored); TextTowerError if unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})[META_KEY])
    except Exception as exc:  # safetensors, OSError, JSON, a missing key: all mean "not our file"
        raise TextTowerError(f"text tower file {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != TOWER_FORMAT:
        raise TextTowerError(f"text tower file {path} has format {found}, this version reads {TOWER_FORMAT}")
    return meta


def open_text_tower(path: str | Path, device: str | torch.device = "cpu") -> tuple[TextTower, dict[str, Any]]:
    """A frozen, eval-mode TextTower from a file written by `save_text_tower`, and the file's metadata.

    On the CPU the weights stay memory-mapped (pages are read when first used and shared between processes that
    open the same file); on CUDA they are copied to the device. Raises TextTowerError for a file that does not load.
    """
    from safetensors.torch import load_file

    meta = read_tower_meta(path)
    try:
        spec = TextTowerSpec(**meta["spec"])
        tower = empty_text_tower(spec)
        tensors = load_file(str(path), device="cpu")
        tower.load_state_dict(tensors, strict=True, assign=True)
    except Exception as exc:  # a truncated file, missing or extra tensors, wrong shapes
        raise TextTowerError(f"text tower file {path} does not load ({type(exc).__name__}: {exc})") from exc
    if "sha256" in meta and tensors_digest(tensors) != meta["sha256"]:  # files of earlier versions have none
        raise TextTowerError(
            f"text tower file {path} is corrupt: its weights do not match the checksum it was written with"
        )
    tower.requires_grad_(False)
    return tower.to(device).eval(), meta


def _standalone_tokenizer_module() -> Any:
    """open_clip's tokenizer module, loaded from its file without open_clip's package import (see module doc)."""
    if "open_clip" in sys.modules:  # already paid for
        return sys.modules["open_clip"].tokenizer
    name = f"{__package__}._open_clip_tokenizer"
    if name not in sys.modules:
        spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise TextTowerError("open_clip is not installed (pip install open_clip_torch)")
        source = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        module_spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)  # it imports only the standard library, ftfy, regex, numpy, torch
        sys.modules[name] = module
    return sys.modules[name]


def clip_tokenizer(context_length: int, kwargs: dict[str, Any] | None = None) -> Any:
    """open_clip's `SimpleTokenizer` (CLIP's BPE) for `context_length` positions, without importing open_clip."""
    return _standalone_tokenizer_module().SimpleTokenizer(context_length=context_length, **(kwargs or {}))


class MemoTokenizer:
    """CLIP's tokenizer answering `encode` from a memo file of its earlier answers.

    The tokenizer itself (`clip_tokenizer`: some 50 MB of Python dictionaries and 0.2 s to build) is built only for a
    text the memo lacks (that answer is added to the memo) and for `__call__` (zero-shot texts). The memo belongs to
    one text tower file, whose recipe fixes the tokenizer. settings: `context_length`, `kwargs`, `sot`, `eot`.
    """

    def __init__(self, settings: dict[str, Any], memo_path: str | Path, tokenizer: Any = None):
        self.settings, self.memo_path, self._tokenizer = settings, Path(memo_path), tokenizer
        self.context_length = int(settings["context_length"])
        self.sot_token_id, self.eot_token_id = int(settings["sot"]), int(settings["eot"])
        self.memo = self._read()

    def _read(self) -> dict[str, list[int]]:
        if not self.memo_path.is_file():
            return {}
        try:
            memo = json.loads(self.memo_path.read_text(encoding="utf-8"))
            if not isinstance(memo, dict) or not all(
                isinstance(ids, list) and all(isinstance(i, int) for i in ids) for ids in memo.values()
            ):
                raise ValueError("not a mapping of texts to token ids")
            return memo
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("token memo %s is unreadable (%s): texts are tokenized again", self.memo_path, exc)
            return {}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = clip_tokenizer(self.context_length, self.settings["kwargs"])
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """BPE token ids of `text` (no [SOS]/[EOT]), as `SimpleTokenizer.encode`."""
        ids = self.memo.get(text)
        if ids is None:
            ids = self.memo[text] = list(self.tokenizer.encode(text))
            try:  # merged with what other sites added meanwhile; a lost race only costs a later miss
                atomic_write_json(self.memo_path, {**self._read(), **self.memo})
            except OSError as exc:
                log.warning("token memo %s not written (%s)", self.memo_path, exc)
        return list(ids)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids [N, context_length] with [SOS] and [EOT], as `SimpleTokenizer.__call__`."""
        return self.tokenizer(texts, context_length) if context_length else self.tokenizer(texts)

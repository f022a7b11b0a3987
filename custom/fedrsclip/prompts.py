"""Learnable text prompts (CoOp-style context vectors) and the text encoder they run through.

A prompt is `[SOS] [V]_1 .. [V]_h/2 [CLASS] [V]_h/2+1 .. [V]_h . [EOT]` (class in the middle, eq. 4), or with the
class at the end or front. FedRSCLIP learns two such contexts, shared and private; both run through the frozen
text encoder in one batch.

The class text is the class name, or its description from `prompt.class_descriptions` (a paragraph fits a
248-position backbone: Long-CLIP, LRSCLIP, or KPS).

The text transformer's mask is causal, so the feature at the EOT token depends only on tokens up to it: the
encoder runs on sequences cut right after the longest EOT position (a few tokens instead of 77 or 248).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .backbone import Backbone
from .config import ConfigError, PromptConfig, read_yaml_mapping

log = logging.getLogger(__name__)

PROMPT_NAMES = ("shared", "private")
SPECIAL_TOKENS = 2  # [SOS] and [EOT]


def load_class_descriptions(path: str | Path, classnames: Sequence[str] | None = None) -> dict[str, str]:
    """Read a YAML or JSON file mapping class name -> description (prompt.class_descriptions).

    With `classnames`, every class must have a description, keyed by its name ('_' and ' ' alike), and the result
    is keyed by `classnames`; extra entries are allowed (one file may serve several class lists). Raises
    ConfigError naming the file and the classes at fault.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"prompt.class_descriptions: {path} does not exist; give a YAML or JSON file mapping "
            "each class name to its description"
        )
    loaded = read_yaml_mapping(path, what="class descriptions file (prompt.class_descriptions)")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, str) or not v.strip()]
    if bad:
        raise ConfigError(
            f"class descriptions file {path}: each entry must map a class name to a non-empty text; "
            f"not so for {', '.join(repr(b) for b in bad[:5])}"
        )
    if classnames is None:
        return dict(loaded)
    by_text = {_as_text(k): v for k, v in loaded.items()}  # "dense_residential" (a folder) = "dense residential"
    if len(by_text) != len(loaded):
        raise ConfigError(f"class descriptions file {path} names a class twice ('_' and ' ' count the same)")
    missing = [c for c in classnames if _as_text(c) not in by_text]
    if missing:
        raise ConfigError(
            f"class descriptions file {path} has no description for {len(missing)} class(es): "
            f"{', '.join(repr(m) for m in missing[:10])}; its keys must be the class names "
            f"({', '.join(repr(c) for c in list(classnames)[:5])}, ...)"
        )
    return {c: by_text[_as_text(c)] for c in classnames}


def _as_text(name: str) -> str:
    return name.replace("_", " ")


def class_texts(classnames: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[str]:
    """The text standing for each class in a prompt: its description, else its name with '_' as spaces.

    A description's trailing periods are dropped: the prompt adds its own ('... description . [EOT]').
    """
    if descriptions is None:
        return [_as_text(name) for name in classnames]
    missing = [c for c in classnames if c not in descriptions]
    if missing:
        raise ConfigError(f"no class description for {', '.join(repr(m) for m in missing[:10])}")
    return [descriptions[name].strip().rstrip(".").strip() for name in classnames]


def _too_long(classname: str, tokens: int, context_length: int, what: str) -> ConfigError:
    hint = (
        "shorten the description, or use a 248-position backbone (model.context_length: 248, or a "
        "Long-CLIP/LRSCLIP checkpoint)"
        if context_length < 248
        else "shorten the description"
    )
    return ConfigError(
        f"class {classname!r}: {what} is {tokens} tokens, over the text encoder's limit of "
        f"{context_length} tokens (model.context_length): {hint}"
    )


def check_texts_fit(tokenizer, texts: Sequence[str], classnames: Sequence[str], context_length: int) -> None:
    """Stop with the class and the limit when a text would be cut by the tokenizer ([SOS] text [EOT])."""
    for name, text in zip(classnames, texts):
        tokens = len(tokenizer.encode(text)) + SPECIAL_TOKENS
        if tokens > context_length:
            raise _too_long(name, tokens, context_length, "the prompt text with [SOS] and [EOT]")


class TextEncoder(nn.Module):
    """The frozen CLIP text tower applied to token embeddings instead of token ids.

    `clip` is an open_clip CLIP or its text side alone (`fedrsclip.text_tower.TextTower`). `amp_dtype` (bf16 or
    fp16; model.text_precision, CUDA only) runs the tower under autocast; the features come out in fp32 either way,
    so what follows (the OT, the losses) stays fp32.
    """

    def __init__(self, clip: nn.Module, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.transformer = clip.transformer
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.amp_dtype = amp_dtype

    def forward(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """embeddings [N, L, W] with L >= max(eot_index) + 1 -> text features [N, E] (fp32)."""
        with torch.autocast(embeddings.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            length = embeddings.shape[1]
            x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
            mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
            x = self.transformer(x, attn_mask=mask)
            x = self.ln_final(x)
            x = x[torch.arange(x.shape[0], device=x.device), eot_index]
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x.float()


def _class_token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "sot_token_id"):
        raise ValueError("prompt learning needs an open_clip model with the CLIP BPE tokenizer (e.g. ViT-B-16)")
    return [tokenizer.encode(text) for text in texts]


class PromptLearner(nn.Module):
    """Shared (and optionally private) context vectors, assembled into per-class prompt embeddings."""

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        cfg: PromptConfig,
        dual: bool = True,
        seed: int = 0,
        private_seed: int | None = None,
    ):
        super().__init__()
        clip, tokenizer = backbone.model, backbone.tokenizer
        width = backbone.text_width
        context_length = int(clip.positional_embedding.shape[0])
        token_embedding = clip.token_embedding
        placeholder = tokenizer.encode("X")[0]

        init_ids: list[int] = []
        n_ctx = cfg.n_ctx
        if cfg.init != "random":
            init_ids = tokenizer.encode(cfg.init)
            n_ctx = len(init_ids)  # a phrase fixes the context length, as in CoOp
        half = n_ctx // 2

        descriptions = None
        if cfg.class_descriptions:
            descriptions = load_class_descriptions(cfg.class_descriptions, classnames)
            log.info("class texts: the descriptions in %s (%d classes)", cfg.class_descriptions, len(classnames))
        ids, ctx_positions = [], []
        for classname, name_ids in zip(classnames, _class_token_ids(tokenizer, class_texts(classnames, descriptions))):
            ctx = [placeholder] * n_ctx
            dot = tokenizer.encode(".")
            if cfg.class_position == "middle":
                body = ctx[:half] + name_ids + ctx[half:] + dot
                pos = list(range(1, 1 + half)) + list(range(1 + half + len(name_ids), 1 + n_ctx + len(name_ids)))
            elif cfg.class_position == "end":
                body = ctx + name_ids + dot
                pos = list(range(1, 1 + n_ctx))
            elif cfg.class_position == "front":
                body = name_ids + ctx + dot
                pos = list(range(1 + len(name_ids), 1 + len(name_ids) + n_ctx))
            else:
                raise ValueError(f"prompt.class_position must be middle, end or front; got {cfg.class_position!r}")
            seq = [tokenizer.sot_token_id] + body + [tokenizer.eot_token_id]
            if len(seq) > context_length:
                what = "the prompt ([SOS], {} context vectors, the {}, '.', [EOT])".format(
                    n_ctx, "description" if descriptions else "class name"
                )
                raise _too_long(classname, len(seq), context_length, what)
            ids.append(seq + [0] * (context_length - len(seq)))
            ctx_positions.append(pos)

        token_ids = torch.tensor(ids, dtype=torch.long)
        eot_index = token_ids.argmax(dim=-1)
        self.length = int(eot_index.max()) + 1
        with torch.no_grad():
            template = token_embedding(token_ids.to(token_embedding.weight.device))[:, : self.length].float()
        self.register_buffer("template", template.cpu(), persistent=False)  # [K, L, W]
        self.register_buffer("ctx_positions", torch.tensor(ctx_positions), persistent=False)  # [K, n_ctx]
        self.register_buffer("eot_index", eot_index, persistent=False)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.classnames = list(classnames)
        self.descriptions = descriptions
        self.n_ctx = n_ctx

        def init_ctx(generator_seed: int) -> torch.Tensor:
            if init_ids:
                with torch.no_grad():
                    ids_t = torch.tensor(init_ids, device=token_embedding.weight.device)
                    return token_embedding(ids_t).float().cpu().clone()
            gen = torch.Generator().manual_seed(generator_seed)
            return torch.randn(n_ctx, width, generator=gen) * cfg.init_std

        # Every site draws the same shared init (same seed); the private one is the site's own.
        self.shared_ctx = nn.Parameter(init_ctx(seed))
        self.private_ctx = nn.Parameter(init_ctx(seed + 1 if private_seed is None else private_seed)) if dual else None
        self.text_encoder = TextEncoder(clip, backbone.text_amp_dtype)

    @property
    def contexts(self) -> list[torch.Tensor]:
        return [self.shared_ctx] if self.private_ctx is None else [self.shared_ctx, self.private_ctx]

    def embeddings(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx [P, n_ctx, W] -> prompt embeddings [P, K, L, W] (differentiable in ctx)."""
        num_prompts, num_classes = ctx.shape[0], self.template.shape[0]
        out = self.template.unsqueeze(0).repeat(num_prompts, 1, 1, 1)
        rows = torch.arange(num_classes, device=ctx.device)[:, None].expand_as(self.ctx_positions)
        for p in range(num_prompts):
            out[p, rows, self.ctx_positions] = ctx[p].unsqueeze(0).expand(num_classes, -1, -1).to(out.dtype)
        return out

    def text_features(self, contexts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Text features [P, K, E] for the given contexts (default: this learner's own)."""
        ctx = torch.stack(contexts if contexts is not None else self.contexts)
        emb = self.embeddings(ctx)
        num_prompts, num_classes = emb.shape[:2]
        feats = self.text_encoder(emb.flatten(0, 1), self.eot_index.repeat(num_prompts))
        return feats.view(num_prompts, num_classes, -1)

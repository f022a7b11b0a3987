"""CLIP checkpoint files: which known format a file is, and its conversion to one open_clip state dict.

Every format below stores OpenAI CLIP's key layout (which open_clip's `CLIP` shares); they differ in wrapping, in
the text position table, and in the activation the weights were trained with, which no key records:

- OpenAI CLIP (QuickGELU, 77 positions): the keys `input_resolution`, `context_length`, `vocab_size`, which only
  OpenAI's TorchScript archives (and state dicts taken from them) hold.
- Long-CLIP, LRSCLIP (QuickGELU, 248 positions): `positional_embedding_res` beside `positional_embedding`.
- RemoteCLIP, GeoRSCLIP, SkyCLIP (77 positions, activation per release): the file name, in `KNOWN_FILES` and
  `KNOWN_FOLDERS` (the README's Backbones table).
- An open_clip hub download: the `open_clip_config.json` beside the file (its `quick_gelu`).

Anything else loads only with `model.quick_gelu` set by the user (`fedrsclip.backbone`).

Long-CLIP's text encoder adds rows 0-19 of `positional_embedding` and rows 20-247 of `positional_embedding_res`
(`model/model_longclip.py`, `encode_text`: the masks `mask1`, `mask2`), so the two splice into one 248-row table
and the checkpoint becomes an ordinary open_clip CLIP with context length 248. `kps_stretch` is Long-CLIP's
Knowledge-Preserved Stretching of a stock table (`model/longclip.py`, `load_from_clip`); LRSCLIP (its paper, sec.
IV-B, eq. 3) uses the same with ratio 4. open_clip's `resize_text_pos_embed` stretches the whole table linearly,
which is neither, so it is never used for these.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

KPS_KEEP = 20  # rows CLIP trained well (Long-CLIP: the effective length of CLIP's text encoder), kept as they are
KPS_RATIO = 4  # interpolation ratio of the rest
OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")  # only OpenAI's archives store these
POS = "positional_embedding"
POS_RES = "positional_embedding_res"


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or converted; the message names the file and what to do."""


def kps_length(rows: int, keep: int = KPS_KEEP, ratio: int = KPS_RATIO) -> int:
    """Rows of a KPS-stretched table: 77 -> 248 (= 4 x 77 - 3 x 20)."""
    return ratio * rows - (ratio - 1) * keep


LONG_CONTEXT = kps_length(77)  # 248: Long-CLIP's and LRSCLIP's text context


def kps_stretch(table: torch.Tensor, keep: int = KPS_KEEP, ratio: int = KPS_RATIO) -> torch.Tensor:
    """Knowledge-Preserved Stretching of a text position table [L, W] -> [ratio*L - (ratio-1)*keep, W].

    Rows p < keep are kept. Row p >= keep sits at q = keep + (p - keep) / ratio of the old table and is the linear
    interpolation of rows floor(q) and floor(q) + 1; the last ratio rows, whose q passes row L-1, extrapolate the
    slope of rows L-2 and L-1. That is Long-CLIP's code (`load_from_clip`); the LRSCLIP paper's eq. 3 omits the
    +keep offset. Computed in float64, returned in the table's dtype.
    """
    rows = table.shape[0]
    if rows <= keep + 1:
        raise CheckpointError(f"a text position table of {rows} rows is too short to stretch (KPS keeps {keep})")
    old = table.detach().to(torch.float64)
    p = torch.arange(kps_length(rows, keep, ratio), dtype=torch.float64)
    q = torch.where(p < keep, p, keep + (p - keep) / ratio)
    low = q.floor().long().clamp(max=rows - 2)  # the last rows use the final segment's slope: extrapolation
    frac = (q - low).unsqueeze(1)
    return ((1 - frac) * old[low] + frac * old[low + 1]).to(table.dtype)


@dataclass(frozen=True)
class KnownCheckpoint:
    """A published checkpoint: one row of the README's Backbones table."""

    family: str
    arch: str  # the open_clip model name it loads into
    quick_gelu: bool
    why: str  # the public source of the activation


_OPENAI = "OpenAI's own weights (QuickGELU, as open_clip's openai tags)"
_LONG = "Long-CLIP's model_longclip.py builds QuickGELU blocks (fine-tuned from OpenAI CLIP)"
_LRS = "LRSCLIP fine-tunes OpenAI CLIP with Long-CLIP's KPS and code (its paper, sec. V-A), so QuickGELU"
_REMOTE = "RemoteCLIP's remoteclip_retrieval.py builds the model with pretrained='openai' (QuickGELU)"
_GEO_B = "GeoRSCLIP's inference.py builds ViT-B/32 with pretrained='openai' (QuickGELU)"
_GEO_H = "GeoRSCLIP's inference.py builds ViT-H/14 with pretrained='laion2b_s32b_b79k' (GELU)"
_SKY_L = "SkyScript's README: ViT-L-14 continued from the openai weights, which its open_clip loads with QuickGELU"
_SKY_B = "SkyScript's README: ViT-B-32 continued from laion2b_e16 (GELU)"

# OpenAI's files (ViT-B-16.pt, ...) are recognised by their keys, not by names that any file may have.
KNOWN_FILES: dict[str, KnownCheckpoint] = {
    "longclip-B.pt": KnownCheckpoint("Long-CLIP", "ViT-B-16", True, _LONG),
    "longclip-L.pt": KnownCheckpoint("Long-CLIP", "ViT-L-14", True, _LONG),
    "LRSCLIP_ViT-B-16.pt": KnownCheckpoint("LRSCLIP", "ViT-B-16", True, _LRS),
    "LRSCLIP_ViT-L-14.pt": KnownCheckpoint("LRSCLIP", "ViT-L-14", True, _LRS),
    "RemoteCLIP-ViT-B-32.pt": KnownCheckpoint("RemoteCLIP", "ViT-B-32", True, _REMOTE),
    "RemoteCLIP-ViT-L-14.pt": KnownCheckpoint("RemoteCLIP", "ViT-L-14", True, _REMOTE),
    "RS5M_ViT-B-32.pt": KnownCheckpoint("GeoRSCLIP", "ViT-B-32", True, _GEO_B),
    "RS5M_ViT-H-14.pt": KnownCheckpoint("GeoRSCLIP", "ViT-H-14", False, _GEO_H),
}
# SkyCLIP ships open_clip training checkpoints (`epoch_20.pt`, {"state_dict": {"module.…"}}) in a folder named
# after the release (SkyScript README, "Download model checkpoints"): matched by that folder's name prefix.
KNOWN_FOLDERS: dict[str, KnownCheckpoint] = {
    "SkyCLIP_ViT_L14": KnownCheckpoint("SkyCLIP", "ViT-L-14", True, _SKY_L),
    "SkyCLIP_ViT_B32": KnownCheckpoint("SkyCLIP", "ViT-B-32", False, _SKY_B),
}


@dataclass
class Checkpoint:
    """A checkpoint file read into one open_clip state dict, with what is known about it."""

    path: Path
    state_dict: dict[str, torch.Tensor]  # open_clip `CLIP` layout, one text position table
    family: str  # "OpenAI CLIP", "Long-CLIP", ..., or "unrecognised"
    quick_gelu: bool | None  # None: the file does not tell
    why: str  # where `quick_gelu` comes from ("" when unknown)
    arch: str | None = None  # the open_clip model the file is published for, when known
    notes: list[str] = field(default_factory=list)  # conversions applied, for the log

    @property
    def context_length(self) -> int:
        return int(self.state_dict[POS].shape[0])


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:  # torch's own test for a TorchScript archive: a constants.pkl record
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from open_clip.factory import load_state_dict

    try:
        if _is_torchscript(path):  # OpenAI's original .pt files; torch.load(weights_only=True) refuses them
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:  # handles .safetensors, {"state_dict": ...} wrappers and a `module.` prefix
            state = load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # torch, safetensors and pickle raise many kinds; all mean "not a readable checkpoint"
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}. Give a CLIP state dict "
            "(.pt/.pth/.bin/.safetensors) or an OpenAI CLIP archive"
        ) from exc
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(state).__name__})")
    state = {str(k): v for k, v in state.items()}
    if any(k.startswith("module.") for k in state):  # open_clip strips the prefix only when the first key has it
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if POS not in state:
        keys = ", ".join(list(state)[:6])
        raise CheckpointError(
            f"checkpoint {path} has no '{POS}': it is not a CLIP text/image model state dict (first keys: {keys})"
        )
    return state


def splice_long_positions(state: dict[str, torch.Tensor], keep: int = KPS_KEEP) -> dict[str, torch.Tensor]:
    """Long-CLIP layout -> one table: rows [0, keep) of `positional_embedding`, the rest of `..._res`."""
    pos, res = state[POS], state[POS_RES]
    if pos.shape != res.shape:
        raise CheckpointError(f"'{POS}' {tuple(pos.shape)} and '{POS_RES}' {tuple(res.shape)} differ in shape")
    out = {k: v for k, v in state.items() if k != POS_RES}
    out[POS] = torch.cat([pos[:keep], res[keep:]])
    return out


def _hub_config(path: Path) -> dict | None:
    config = path.parent / "open_clip_config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_cfg") or None
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {config} (beside {path.name}): {exc}") from exc


def known_by_name(path: Path) -> KnownCheckpoint | None:
    """The published checkpoint this file name (or, for SkyCLIP, its folder) names, if any."""
    if path.name in KNOWN_FILES:
        return KNOWN_FILES[path.name]
    for prefix, known in KNOWN_FOLDERS.items():
        if path.parent.name.startswith(prefix):
            return known
    return None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file, recognise its format and convert it to one open_clip state dict.

    Raises CheckpointError for an unreadable file, or one whose name says Long-CLIP/LRSCLIP but whose keys do not.
    """
    path = Path(path)
    state = _read_state_dict(path)
    known = known_by_name(path)
    long_layout = POS_RES in state
    if known is not None and known.family in ("Long-CLIP", "LRSCLIP") and not long_layout:
        raise CheckpointError(
            f"{path.name} is named like a {known.family} checkpoint but has no '{POS_RES}': "
            "it is not the published file (rename it, and set model.quick_gelu yourself)"
        )
    notes: list[str] = []
    if any(k in state for k in OPENAI_SCALARS):
        state = {k: v for k, v in state.items() if k not in OPENAI_SCALARS}
        family, quick_gelu, why = "OpenAI CLIP", True, _OPENAI + "; recognised by its input_resolution key"
    else:
        family, quick_gelu, why = "unrecognised", None, ""
    if long_layout:
        state = splice_long_positions(state)
        notes.append(f"spliced {POS} rows 0-{KPS_KEEP - 1} with {POS_RES} rows {KPS_KEEP}-{state[POS].shape[0] - 1}")
        family, quick_gelu, why = "Long-CLIP/LRSCLIP", True, _LONG + f"; recognised by its '{POS_RES}' key"
    arch = None
    if known is not None and (family == "unrecognised" or known.family in family):  # the name refines the keys
        family, quick_gelu, why = known.family, known.quick_gelu, f"{known.why}; recognised by its file name"
        arch = known.arch
    elif family == "unrecognised" and (hub := _hub_config(path)) is not None:
        family, quick_gelu = "open_clip hub folder", bool(hub.get("quick_gelu", False))
        why = f"open_clip_config.json beside it says quick_gelu: {str(quick_gelu).lower()}"
    return Checkpoint(path, state, family, quick_gelu, why, arch, notes)


def stretch_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of an open_clip CLIP state dict with its text position table KPS-stretched (77 -> 248 rows)."""
    return {**state, POS: kps_stretch(state[POS])}

"""A site: its data split, cached image features, trainer and local state on disk.

Used by the in-process federation and by the FLARE executor alike. Local state (the private prompt and the last
shared prompt, or the baseline's whole model) is written atomically after every round and reloaded at start, so
a site that runs each round in a fresh process, or restarts, continues where it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .backbone import Backbone, open_backbone
from .config import Config
from .data.composite import settings_from_config
from .data.errors import DataError
from .data.manifest import load_manifest, site_split
from .features import FeatureSet, cached_features
from .io import atomic_torch_save, atomic_write
from .privacy import protect_outgoing
from .trainer import Payload, PayloadError, PromptTrainer, RoundResult

log = logging.getLogger(__name__)

STATE_SUFFIX = "-state.pt"


def class_fingerprint(classnames: Sequence[str]) -> str:
    """A short, stable name of a class list ("K:sha256 prefix"), sent with each update: the server must never
    average prompts trained on different class lists (the prompts' shapes would not show it)."""
    return f"{len(classnames)}:{hashlib.sha256(json.dumps(list(classnames)).encode()).hexdigest()[:12]}"


def adopt_state(resume_from: str | None, name: str, state_dir: str | Path, workspace_root: str | Path) -> Path | None:
    """Start a resumed job from an earlier job's site state (train.resume_from), copied, never moved: the earlier
    file stays as it was. Only when this job has no state of its own yet. Returns the file copied, if any."""
    if not resume_from:
        return None
    target = Path(state_dir) / f"{name}{STATE_SUFFIX}"
    source = Path(resume_from.replace("{site}", name)).expanduser()
    if not source.is_absolute():
        source = Path(workspace_root) / source
    source = source / f"{name}{STATE_SUFFIX}"
    if target.is_file():
        return None
    if not source.is_file():
        log.warning("%s: train.resume_from names %s, which does not exist: this site's private prompt starts over",
                    name, source)
        return None
    data = source.read_bytes()
    atomic_write(target, lambda handle: handle.write(data))
    log.info("%s: local state of the earlier job copied from %s to %s", name, source, target)
    return source


class SiteBase:
    """What every kind of site shares: its manifest part, its state file, and the round protocol.

    Subclasses set `trainer`, `train_set` and `test_set`, and `STATE_KEY`, the entry of the state file that holds
    `trainer.local_state()`.
    """

    STATE_KEY = "local"

    def __init__(self, cfg: Config, name: str, manifest: Mapping[str, Any] | None,
                 state_dir: str | Path | None):
        self.cfg, self.name = cfg, name
        if manifest is None:
            if not cfg.data.manifest:
                raise DataError(f"{name}: no data configured; set data.manifest to a partition manifest "
                                "(fedrsclip data partition ...)")
            manifest = load_manifest(cfg.data.manifest)
        self.manifest = manifest
        self.classnames: list[str] = list(manifest["classes"])
        self.state_path = Path(state_dir) / f"{name}{STATE_SUFFIX}" if state_dir else None

    def split_items(self, split: str) -> list[tuple[Path, int]]:
        """This site's (path, label) items of a split; every file must exist."""
        items = site_split(self.manifest, self.name, split, root=self.cfg.data.root)
        missing = [p for p, _ in items if not p.is_file()]
        if missing:
            raise DataError(f"{self.name}: {len(missing)} of {len(items)} {split} images are missing, e.g. "
                            f"{missing[0]}; set data.root to the folder that holds the class folders")
        return items

    def state_blob(self, round_idx: int | None = None) -> dict[str, Any]:
        """The site-local state as saved on disk (never sent)."""
        return {"round": round_idx, "classes": list(self.classnames), self.STATE_KEY: self.trainer.local_state()}

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Refuse a saved state that belongs to another configuration (subclasses add checks)."""

    def load_state(self) -> bool:
        if self.state_path is None or not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: refuse, never overwrite it with a fresh start
            raise PayloadError(f"{self.name}: the saved state {self.state_path} cannot be read ({exc})") from exc
        saved = state.get("classes")
        if saved is not None and list(saved) != self.classnames:
            raise PayloadError(f"{self.name}: the saved state {self.state_path} was trained on {len(saved)} classes "
                               f"({', '.join(saved[:3])}, ...), this site's manifest has {len(self.classnames)} "
                               f"({', '.join(self.classnames[:3])}, ...); use the manifest it was trained with")
        self.check_state(state)
        self.trainer.load_local_state(state[self.STATE_KEY])
        log.info("%s: resumed local state from %s (round %s)", self.name, self.state_path, state.get("round"))
        return True

    def save_state(self, round_idx: int) -> None:
        if self.state_path is not None:
            atomic_torch_save(self.state_path, self.state_blob(round_idx))

    def train_round(self, global_payload: Payload | None, round_idx: int, peers: np.ndarray | None = None,
                    **kwargs) -> RoundResult:
        if global_payload:
            self.trainer.set_global(global_payload)
        result = self.trainer.train_round(self.train_set, round_idx, peers=peers, **kwargs)
        result = protect_outgoing(result, self.trainer, self.cfg, round_idx)  # DP (opt-in) + the allow-list check
        result.metrics["classes"] = class_fingerprint(self.classnames)  # checked by the server's aggregator
        self.save_state(round_idx)
        return result

    def evaluate(self, global_payload: Payload | None = None) -> dict:
        """Accuracy on this site's own test split with the received global model (and its private part)."""
        if global_payload:
            self.trainer.set_global(global_payload)
        if self.test_set is None:
            return {"accuracy": float("nan"), "loss": float("nan"), "samples": 0}
        return self.trainer.evaluate(self.test_set)


class Site(SiteBase):
    """A prompt-learning site: cached CLIP image features and a PromptTrainer."""

    STATE_KEY = "prompts"

    def __init__(
        self,
        cfg: Config,
        name: str,
        manifest: Mapping[str, Any] | None = None,
        backbone: Backbone | None = None,
        state_dir: str | Path | None = None,
        progress: bool = True,
    ):
        super().__init__(cfg, name, manifest, state_dir)
        self.backbone = backbone or open_backbone(cfg.model, cfg.data.cache_dir)  # warm: the text side only
        cache_dir = Path(cfg.data.cache_dir) / name
        splits = {}
        for split in ("train", "test"):
            items = self.split_items(split)
            splits[split] = cached_features(self.backbone, items, cache_dir, split, progress=progress,
                                            image=settings_from_config(cfg.data, self.manifest.get("modality"))) \
                if items else None
        if backbone is None:  # this site's own CLIP: the image tower is no longer needed
            self.backbone.release_image_tower()
        if splits["train"] is None:
            raise DataError(f"{name}: the manifest gives this site no training images")
        self.train_set: FeatureSet = splits["train"]
        self.test_set: FeatureSet | None = splits["test"]
        self.trainer = PromptTrainer(cfg, self.backbone, self.classnames, site=name)
        self.load_state()


def make_site(cfg: Config, name: str, manifest: Mapping[str, Any] | None = None, backbone: Backbone | None = None,
              state_dir: str | Path | None = None, progress: bool = True) -> SiteBase:
    """A prompt-learning `Site`, or a `ClassifierSite` for the full-model baseline (same interface)."""
    from .algorithms import get_algorithm

    if get_algorithm(cfg.algorithm).kind == "classifier":
        from .classifier import ClassifierSite

        return ClassifierSite(cfg, name, manifest, state_dir=state_dir, progress=progress)
    return Site(cfg, name, manifest, backbone, state_dir, progress=progress)

"""The full-model baseline's site: its images (decoded, small splits kept in memory) and a ClassifierTrainer; the
whole model is its local state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..config import Config
from ..data.errors import DataError
from ..protocol import PayloadError
from ..site import Site
from .classifier import KIND, ClassifierTrainer, ImageDataset


class ClassifierSite(Site):
    """A site of the full-model baseline: its images and a ClassifierTrainer; the whole model is its state."""

    STATE_KEY = "model"
    KIND = KIND

    def __init__(
        self,
        cfg: Config,
        name: str,
        manifest: Mapping[str, Any] | None = None,
        backbone: None = None,
        state_dir: str | Path | None = None,
        progress: bool = True,
    ):
        """`backbone`: none (a full model is not shared between sites); the argument keeps the one signature of
        `fedrsclip.factory.make_site`."""
        if backbone is not None:
            raise TypeError("ClassifierSite takes no shared backbone: each site builds its own timm model")
        super().__init__(cfg, name, manifest, state_dir)
        begin = time.perf_counter()
        self.trainer = ClassifierTrainer(cfg, self.classnames, site=name)
        loaded = time.perf_counter()
        splits: dict[str, ImageDataset | None] = {}
        for split in ("train", "test"):
            items = self.split_items(split)
            splits[split] = (
                self.trainer.make_dataset(
                    items, train=split == "train", progress=progress, desc=f"{name}: decoding {split} images"
                )
                if items
                else None
            )
        if splits["train"] is None or len(splits["train"]) == 0:
            raise DataError(f"{name}: the manifest gives this site no (readable) training images")
        self.train_set: ImageDataset = splits["train"]
        self.test_set: ImageDataset | None = (
            splits["test"] if splits["test"] is not None and len(splits["test"]) else None
        )
        decoded = time.perf_counter()  # the images decoded: this model's counterpart of feature extraction
        self.load_state()
        self.setup_timings = {"load": loaded - begin + time.perf_counter() - decoded, "extract": decoded - loaded}

    def state_blob(self, round_idx: int | None = None, **extra: Any) -> dict[str, Any]:
        return super().state_blob(round_idx, arch=self.cfg.classifier.arch, **extra)

    def check_state(self, state: Mapping[str, Any]) -> None:
        arch = state.get("arch")
        if arch is not None and arch != self.cfg.classifier.arch:
            raise PayloadError(
                f"{self.name}: saved state {self.state_path} is for {arch}, the configuration asks "
                f"for {self.cfg.classifier.arch}; delete it or use another state folder"
            )

    @property
    def description(self) -> str:
        classifier = self.cfg.classifier
        return f"timm {classifier.arch} (pretrained={classifier.pretrained})"

    @property
    def weights(self) -> str:
        # a full model trained from its start: its weights are never frozen random ones
        return "tag:timm-pretrained" if self.cfg.classifier.pretrained else "from-scratch"

    def predict_test(self) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
        logits, labels = self.trainer.predict(self.test_set)  # only readable images come back
        items = self.test_set.items
        paths = [str(p) for p, _ in items] if len(items) == len(labels) else None
        return paths, labels.numpy(), logits.argmax(-1).numpy()

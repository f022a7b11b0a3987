"""The paper's full-model FedAvg baseline ("fedavg-full"): a plain timm image classifier trained end to end.

Every floating-point entry of the model's state_dict (parameters and float buffers such as BatchNorm running
statistics) crosses the wire each round, which is what the paper's "Transmitted Parameter" column counts
(ViT-Tiny ~5.7M, EfficientNet-B1 ~7.8M with ImageNet's 1000-class head).

`ClassifierTrainer` is a `fedrsclip.protocol.Trainer`, as `PromptTrainer` is; its site is
`fedrsclip.baselines.site.ClassifierSite`, so both runners drive it as they drive FedRSCLIP.
Images are decoded with `load_rgb`; small splits are decoded once and kept in memory as resized uint8 arrays.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..algorithms import Algorithm, get_algorithm
from ..backbone import resolve_device
from ..config import Config, ConfigError
from ..data.errors import DataError, ImageReadError
from ..data.images import load_rgb
from ..protocol import Payload, PayloadError, RoundResult, as_float32, site_seed

log = logging.getLogger(__name__)

KIND = "classifier"  # the Algorithm.kind this baseline runs (fedrsclip.factory)

# Splits with fewer images than this (and at most CACHE_MAX_BYTES once resized) are decoded once and kept in
# memory as uint8 arrays whose shorter side is the eval resize size (248 px for 224 px inputs: ~180 KB an image).
CACHE_MAX_IMAGES = 5000
CACHE_MAX_BYTES = 2 << 30
# Random-resized-crop scale range of the (light) training augmentation.
TRAIN_CROP_SCALE = (0.5, 1.0)


class ClassifierError(RuntimeError):
    """The classifier cannot be built as configured; the message says how to fix it."""


# ---- model ----------------------------------------------------------------------------------------------------------
def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _takes_img_size(arch: str) -> bool:
    """Models with a fixed input size (ViTs: position embeddings) take `img_size`; convnets do not need it."""
    from timm.models import get_pretrained_cfg

    try:
        pcfg = get_pretrained_cfg(arch)
    except RuntimeError:
        return False
    return bool(pcfg is not None and getattr(pcfg, "fixed_input_size", False))


def build_classifier(cfg: Config, num_classes: int) -> torch.nn.Module:
    """A timm classifier with `num_classes` outputs, on the CPU, seeded with cfg.train.seed.

    Every site builds the same initial weights (random or pretrained backbone + the same seeded head). With
    classifier.pretrained the ImageNet weights come from the Hugging Face Hub cache; when they cannot be had this
    raises ClassifierError instead of continuing on random weights.
    """
    import timm
    from timm.models import is_model, is_model_pretrained

    cc = cfg.classifier
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ClassifierError(f"a classifier needs at least 2 classes; got num_classes={num_classes!r}")
    if not is_model(cc.arch):
        raise ClassifierError(
            f"classifier.arch {cc.arch!r} is not a timm model; pick one of timm.list_models() "
            "(e.g. vit_tiny_patch16_224, efficientnet_b1)"
        )
    if cc.image_size < 16:
        raise ClassifierError(f"classifier.image_size must be at least 16 pixels; got {cc.image_size}")
    if cc.pretrained and not is_model_pretrained(cc.arch):
        raise ClassifierError(
            f"timm has no pretrained weights for {cc.arch!r}; set classifier.pretrained=false for random "
            f"initialisation or choose a name from timm.list_pretrained('{cc.arch.split('.')[0]}*')"
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if _takes_img_size(cc.arch):
        kwargs["img_size"] = cc.image_size
    if cc.pretrained and not _hub_offline():
        log.info(
            "%s: loading pretrained weights (from the Hugging Face Hub cache, or downloading them); "
            "set HF_HUB_OFFLINE=1 to fail fast on a machine without internet",
            cc.arch,
        )
    with torch.random.fork_rng(devices=[]):  # same initial weights on every site; caller's RNG untouched
        torch.manual_seed(cfg.train.seed)
        try:
            model = timm.create_model(cc.arch, pretrained=cc.pretrained, **kwargs)
        except Exception as exc:
            if not cc.pretrained:
                raise ClassifierError(f"cannot build timm model {cc.arch!r} with {kwargs}: {exc}") from exc
            raise ClassifierError(
                f"cannot load pretrained weights for {cc.arch!r} ({type(exc).__name__}: {exc}). Either set "
                "classifier.pretrained=false to train from random initialisation, or fetch the weights once on a "
                'machine with internet access: python -c "import timm; '
                f"timm.create_model('{cc.arch}', pretrained=True)\" and copy its Hugging Face cache "
                "(~/.cache/huggingface, or $HF_HOME) to this machine"
            ) from exc
    return model


def classifier_num_params(model: torch.nn.Module) -> int:
    """Values a site transmits per round: every floating-point state_dict entry (parameters + float buffers)."""
    return int(sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()))


# ---- data -----------------------------------------------------------------------------------------------------------
def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack (image, label) pairs, dropping unreadable images (None); None when nothing is left."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.long)


class ImageDataset(torch.utils.data.Dataset):
    """(path, label) items -> (transformed image tensor, label).

    `cache` (default: fewer than CACHE_MAX_IMAGES items, at most CACHE_MAX_BYTES at `cache_size`) decodes every
    image once at construction, shrinks it so its shorter side is `cache_size` (never enlarges) and keeps it as a
    uint8 array; unreadable images are then dropped at construction with a warning naming the file. Without the
    cache images are decoded on every access and an unreadable one yields None (dropped by the collate function)
    with a warning.
    """

    def __init__(
        self,
        items: Sequence[tuple[str | Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        cache: bool | None = None,
        cache_size: int | None = None,
        interpolation: int = Image.BICUBIC,
        progress: bool = False,
        desc: str = "decoding images",
    ):
        self.transform = transform
        self.cache_size = cache_size
        self.interpolation = interpolation
        self.skipped: list[tuple[Path, str]] = []
        self._warned: set[str] = set()
        items = [(Path(p), int(label)) for p, label in items]
        if cache is None:
            per_image = 3 * (cache_size or 256) ** 2
            cache = len(items) < CACHE_MAX_IMAGES and len(items) * per_image <= CACHE_MAX_BYTES
        self.cached = bool(cache)
        self._arrays: list[np.ndarray] | None = None
        if self.cached:
            kept, arrays = [], []
            for path, label in tqdm(items, desc=desc, unit="img", disable=not progress):
                try:
                    image = self._shrink(load_rgb(path))
                except ImageReadError as exc:
                    self._skip(path, exc)
                    continue
                kept.append((path, label))
                arrays.append(np.asarray(image, dtype=np.uint8))
            items, self._arrays = kept, arrays
        self.items: list[tuple[Path, int]] = items
        self.labels = torch.tensor([label for _, label in items], dtype=torch.long)

    def _shrink(self, image: Image.Image) -> Image.Image:
        short = min(image.size)
        if self.cache_size is None or short <= self.cache_size:
            return image
        scale = self.cache_size / short
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, resample=self.interpolation)

    def _skip(self, path: Path, exc: ImageReadError) -> None:
        reason = getattr(exc, "reason", str(exc))
        if str(path) not in self._warned:
            self._warned.add(str(path))
            self.skipped.append((path, reason))
            warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> Image.Image | None:
        if self._arrays is not None:
            return Image.fromarray(self._arrays[index])
        path = self.items[index][0]
        try:
            return load_rgb(path)
        except ImageReadError as exc:
            self._skip(path, exc)
            return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        image = self.image(index)
        if image is None:
            return None
        return self.transform(image), self.items[index][1]


# ---- trainer --------------------------------------------------------------------------------------------------------
class ClassifierTrainer:
    """One site's full classifier: receives the global weights, trains locally, returns all its weights."""

    def __init__(
        self, cfg: Config, classnames: Sequence[str], site: str = "site-1", model: torch.nn.Module | None = None
    ):
        self.cfg = cfg
        self.algorithm: Algorithm = get_algorithm(cfg.algorithm)
        if self.algorithm.kind != KIND:
            raise ConfigError(
                f"algorithm {cfg.algorithm!r} learns prompts, not a full classifier; "
                "ClassifierTrainer runs classifier algorithms such as fedavg-full"
            )
        self.site = site
        self.classnames = list(classnames)
        self.seed = site_seed(cfg.train.seed, site)
        self.device = resolve_device(cfg.model.device)
        model = model if model is not None else build_classifier(cfg, len(self.classnames))
        self.model = model.to(self.device)
        state = self.model.state_dict()
        # what crosses the wire: name -> shape of every floating-point state_dict entry, in state_dict order
        self.shapes: dict[str, tuple[int, ...]] = {k: tuple(v.shape) for k, v in state.items() if v.is_floating_point()}
        self.data_config = self._data_config()

    # ---- input pipeline -----------------------------------------------------------------------------------------
    def _data_config(self) -> dict:
        from timm.data import resolve_data_config

        size = self.cfg.classifier.image_size
        return resolve_data_config({"input_size": (3, size, size)}, model=self.model)

    @property
    def cache_size(self) -> int:
        """Shorter side the eval transform resizes to before its center crop; cached images are kept at this."""
        dc = self.data_config
        return int(math.floor(dc["input_size"][-1] / (dc.get("crop_pct") or 0.875)))

    def eval_transform(self) -> Callable:
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    def train_transform(self) -> Callable:
        from timm.data.transforms import str_to_interp_mode
        from torchvision import transforms

        dc = self.data_config
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    dc["input_size"][-1], scale=TRAIN_CROP_SCALE, interpolation=str_to_interp_mode(dc["interpolation"])
                ),
                transforms.RandomHorizontalFlip(),
                transforms.RandomVerticalFlip(),  # overhead imagery has no "up"
                transforms.ToTensor(),
                transforms.Normalize(dc["mean"], dc["std"]),
            ]
        )

    def make_dataset(
        self,
        items: Sequence[tuple[str | Path, int]],
        train: bool,
        cache: bool | None = None,
        progress: bool = False,
        desc: str | None = None,
    ) -> ImageDataset:
        from timm.data.transforms import str_to_pil_interp

        return ImageDataset(
            items,
            self.train_transform() if train else self.eval_transform(),
            cache=cache,
            cache_size=self.cache_size,
            interpolation=str_to_pil_interp(self.data_config["interpolation"]),
            progress=progress,
            desc=desc or f"{self.site}: decoding images",
        )

    def _loader(
        self, dataset, batch_size: int, sampler: Iterable[int] | None = None, generator: torch.Generator | None = None
    ) -> torch.utils.data.DataLoader:
        workers = self.cfg.data.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    # ---- what crosses the wire -----------------------------------------------------------------------------------
    def payload(self) -> Payload:
        state = self.model.state_dict()
        return {k: state[k].detach().cpu().numpy().astype(np.float32) for k in self.shapes}

    @property
    def num_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes.values()))

    def set_global(self, payload: Mapping[str, np.ndarray]) -> None:
        """Load the aggregated weights; refuses (loading nothing) anything that does not fit this model."""
        missing = [k for k in self.shapes if k not in payload]
        extra = [k for k in payload if k not in self.shapes]
        arch = self.cfg.classifier.arch
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
            if extra:
                parts.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
            raise PayloadError(
                f"{self.site}: the global model does not fit {arch}: {', '.join(parts)} of "
                f"{len(self.shapes)} entries (check classifier.arch matches the job's)"
            )
        values = {}
        for key, shape in self.shapes.items():
            value = np.asarray(payload[key])
            if value.shape != shape:
                raise PayloadError(
                    f"{self.site}: received {key} of shape {value.shape}, this model needs {shape} "
                    "(check classifier.arch, classifier.image_size and the number of classes "
                    "match the job's)"
                )
            if not np.issubdtype(value.dtype, np.floating):
                raise PayloadError(f"{self.site}: received {key} of dtype {value.dtype}, expected floats")
            value, bad = as_float32(value)  # checked as it is loaded: 1e39 is finite in float64, inf in float32
            if bad:
                raise PayloadError(
                    f"{self.site}: the received global {key} holds {bad} NaN or Inf values (beyond "
                    "float32's range counts as Inf); nothing was loaded"
                )
            values[key] = value
        state = self.model.state_dict()
        with torch.no_grad():
            for key, value in values.items():
                state[key].copy_(torch.from_numpy(np.ascontiguousarray(value)))

    # ---- site-local state (never sent) ---------------------------------------------------------------------------
    def local_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing or extra:
            raise PayloadError(
                f"does not fit {self.cfg.classifier.arch} "
                f"({len(missing)} missing, {len(extra)} unexpected entries, e.g. "
                f"{(missing or extra)[0]!r}); the configuration changed since it was saved"
            )
        for key, tensor in own.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise PayloadError(
                    f"holds {key} of shape {tuple(state[key].shape)}, the model needs "
                    f"{tuple(tensor.shape)}; the configuration changed since it was saved"
                )
            if tensor.is_floating_point() and not torch.isfinite(state[key].to(tensor.dtype)).all():
                raise PayloadError(f"holds {key} with NaN or Inf values (beyond float32's range counts as Inf)")
        self.model.load_state_dict(dict(state))

    # ---- training -------------------------------------------------------------------------------------------------
    def train_round(
        self,
        train: torch.utils.data.Dataset,
        round_idx: int = 0,
        peers: np.ndarray | None = None,  # accepted for interface parity; unused by full-model FedAvg
        should_abort: Callable[[], bool] = lambda: False,
    ) -> RoundResult:
        """cfg.train.local_epochs epochs of SGD (classifier.lr, a fresh optimiser each round) on `train`."""
        tc = self.cfg.train
        n = len(train)
        if n == 0:
            raise DataError(f"{self.site}: no training images to train on")
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=self.cfg.classifier.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
        )
        seed = site_seed(tc.seed + 7919 * round_idx, self.site)
        gen = torch.Generator().manual_seed(seed)
        loss_sum = 0.0
        correct = seen_total = steps = 0
        seen = n
        start = time.perf_counter()
        self.model.train()
        with torch.random.fork_rng(devices=[]):  # deterministic augmentation, caller's RNG untouched
            torch.manual_seed(seed)
            for _epoch in range(tc.local_epochs):
                order = torch.randperm(n, generator=gen).tolist()
                seen = 0  # images actually used this epoch (unreadable ones are dropped)
                for batch in self._loader(train, tc.batch_size, sampler=order, generator=gen):
                    if should_abort():
                        raise InterruptedError(f"{self.site}: training aborted in round {round_idx}")
                    if batch is None:
                        continue
                    images, labels = (t.to(self.device, non_blocking=True) for t in batch)
                    logits = self.model(images)
                    loss = F.cross_entropy(logits, labels)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{self.site}: loss became {loss.item()} in round {round_idx}; lower classifier.lr"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    steps += 1
                    seen += len(labels)
                    loss_sum += float(loss.detach()) * len(labels)
                    correct += int((logits.detach().argmax(-1) == labels).sum())
                seen_total += seen
        seconds = time.perf_counter() - start
        if seen == 0:
            raise DataError(f"{self.site}: none of the {n} training images could be read")
        denom = max(1, seen_total)
        metrics = {
            "train_loss": loss_sum / denom,
            "train_ce": loss_sum / denom,
            "train_accuracy": 100.0 * correct / denom,
            "train_seconds": seconds,
            "steps": steps,
        }
        payload = self.payload() if self.algorithm.federated else {}
        return RoundResult(payload=payload, num_samples=seen, metrics=metrics)

    # ---- evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, K] and labels [N] of the readable images of `dataset`, in order."""
        self.model.eval()
        logits, labels = [], []
        for batch in self._loader(dataset, self.cfg.train.eval_batch_size):
            if batch is None:
                continue
            images, y = batch
            logits.append(self.model(images.to(self.device, non_blocking=True)).float().cpu())
            labels.append(y)
        if not logits:
            return torch.zeros(0, len(self.classnames)), torch.zeros(0, dtype=torch.long)
        return torch.cat(logits), torch.cat(labels)

    def evaluate(self, dataset: torch.utils.data.Dataset) -> dict:
        logits, labels = self.predict(dataset)
        if len(labels) == 0:
            return {"accuracy": float("nan"), "loss": float("nan"), "samples": 0}
        return {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()) * 100.0,
            "loss": float(F.cross_entropy(logits, labels)),
            "samples": int(len(labels)),
        }

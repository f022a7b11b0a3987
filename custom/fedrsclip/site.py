"""A site: its data split, its trainer, its local state on disk, and the round protocol both runners drive.

`Site.run_round` is one round at a site, the same for the in-process runner and the FLARE executor: evaluate the
received global model (with the site's private part), train the local epochs, apply DP (opt-in), build the
round record, pass the allow-list check (`fedrsclip.privacy.check_outgoing`), save the local state. Local state
(the private prompt and the last shared prompt, or the baseline's whole model) is written atomically after every
round and reloaded at start, so a site that runs each round in a fresh process, or restarts, continues where it
was. `PromptSite` is FedRSCLIP's site; the full-model baseline's is `fedrsclip.baselines.site.ClassifierSite`;
`fedrsclip.factory.make_site` picks one.

Label sets and modalities (docs/multimodal.md): a multi-label manifest makes the site multi-label (refused, with the
reason, by an algorithm that trains one class per image, or when data.multi_label says otherwise). In a
multi-modal federation (multimodal.modalities, or a multi-modal manifest) a prompt site reads each modality it holds
through that modality's composite, whitens each with its own statistics (FW, multimodal.whitening), and trains and
sends its modalities' adapters (MF).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .algorithms import ALGORITHMS, Algorithm, get_algorithm
from .atomic import atomic_torch_save, atomic_write
from .backbone import Backbone, load_remembered, open_backbone
from .config import Config
from .data.composite import image_settings, settings_from_config
from .data.errors import DataError
from .data.manifest import is_multi_label, load_manifest, site_split
from .data.multimodal import is_multi_modal, paired_split, site_modalities
from .features import FeatureSet, cached_features
from .multimodal import ModalSet
from .privacy import check_outgoing, dp_warning, protect_outgoing
from .prompts import class_texts
from .protocol import Payload, PayloadError, RoundRecord, Trainer, Update, class_fingerprint, payload_nbytes
from .trainer import PromptTrainer
from .whitening import fit_whitening, whiten
from .zeroshot import zero_shot_accuracy

log = logging.getLogger(__name__)

STATE_SUFFIX = "-state.pt"  # <state dir>/<site>-state.pt
STATE_FORMAT = 2  # 2: with "checksum" and "dp_releases"; files without "format" (1) are read, unchecked
STATE_MODE = 0o600  # the private prompt: readable by the site's own account only


def state_file(state_dir: str | Path, name: str) -> Path:
    return Path(state_dir) / f"{name}{STATE_SUFFIX}"


def state_checksum(state: Mapping[str, Any]) -> str:
    """SHA-256 of a saved state's content (every entry but "checksum"): tensors by dtype, shape and bytes, other
    values as JSON. torch.save keeps no checksum of its own, so a flipped byte in a prompt would load silently."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy())
        elif isinstance(value, Mapping):
            digest.update(b"{")
            for key in sorted(value, key=str):
                feed(str(key))
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        elif value is None or isinstance(value, (str, int, float, bool)):
            digest.update(json.dumps(value).encode())
        else:
            raise TypeError(f"a site state holds a {type(value).__name__}, which has no checksum")

    feed({k: v for k, v in state.items() if k != "checksum"})
    return digest.hexdigest()


def state_problem(state: Any, key: str) -> str | None:
    """What is wrong with the structure or content of a loaded state file (None: nothing): it must be a mapping
    with `key` (a mapping of finite tensors), a class list, a round, a release count, and a matching checksum."""
    if not isinstance(state, Mapping):
        return f"is not a fedrsclip site state (it holds a {type(state).__name__})"
    local = state.get(key)
    if not isinstance(local, Mapping) or not all(isinstance(v, torch.Tensor) for v in local.values()):
        return (
            f"has no {key!r} entry of tensors (its entries: {sorted(map(str, state))[:6]}): it is not this kind "
            "of site's state"
        )
    fmt = state.get("format", 1)
    if fmt not in (1, STATE_FORMAT):
        return f"has format {fmt!r}; this version reads {STATE_FORMAT}"
    classes, rnd, releases = state.get("classes"), state.get("round"), state.get("dp_releases", 0)
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "has a class list that is not a list of names"
    if rnd is not None and (not isinstance(rnd, int) or isinstance(rnd, bool)):
        return f"has round {rnd!r}, not a number"
    if not isinstance(releases, int) or isinstance(releases, bool) or releases < 0:
        return f"has dp_releases {releases!r}, not a count"
    if fmt == STATE_FORMAT:
        try:
            same = state.get("checksum") == state_checksum(state)
        except TypeError as exc:
            return f"is corrupt ({exc})"
        if not same:
            return "is corrupt: its content does not match the checksum saved with it"
    for name, tensor in local.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"holds NaN or Inf values in {name}"
    return None


def adopt_state(resume_from: str | None, name: str, state_dir: str | Path, workspace_root: str | Path) -> Path | None:
    """Start a resumed job from an earlier job's site state (train.resume_from), copied, never moved: the earlier
    file stays as it was. Only when this job has no state of its own yet. Returns the file copied, if any."""
    if not resume_from:
        return None
    target = state_file(state_dir, name)
    source = Path(resume_from.replace("{site}", name)).expanduser()
    if not source.is_absolute():
        source = Path(workspace_root) / source
    source = state_file(source, name)
    if target.is_file():
        return None
    if not source.is_file():
        log.warning(
            "%s: train.resume_from names %s, which does not exist: this site's private prompt starts over", name, source
        )
        return None
    data = source.read_bytes()
    atomic_write(target, lambda handle: handle.write(data), mode=STATE_MODE)
    log.info("%s: local state of the earlier job copied from %s to %s", name, source, target)
    return source


def label_kind(cfg: Config, manifest: Mapping[str, Any], algorithm: Algorithm, site: str) -> bool:
    """True for a multi-label manifest. DataError when the algorithm does not train that kind of labels, or
    data.multi_label declares the other kind (a manifest given to the wrong run)."""
    multi = is_multi_label(manifest)
    kind = "multi-label (a list of labels per image)" if multi else "single-label (one class per image)"
    dataset = manifest.get("dataset", "?")
    if ("multi" if multi else "single") not in algorithm.labels:
        able = ", ".join(a for a in ALGORITHMS if ("multi" if multi else "single") in ALGORITHMS[a].labels)
        raise DataError(
            f"{site}: the manifest of dataset {dataset} is {kind}, and algorithm {algorithm.name} trains "
            f"{' and '.join(algorithm.labels)}-label data only; use one of: {able}"
        )
    if cfg.data.multi_label is not None and cfg.data.multi_label != multi:
        wanted = "multi-label" if cfg.data.multi_label else "single-label"
        raise DataError(
            f"{site}: data.multi_label is {str(cfg.data.multi_label).lower()} (a {wanted} run) but the "
            f"manifest of dataset {dataset} is {kind}; give this site a {wanted} manifest, or set "
            "data.multi_label: null to follow the manifest"
        )
    return multi


class Site:
    """What every kind of site shares: its manifest part, its state file, and the round protocol.

    Subclasses set `trainer` (a `protocol.Trainer`), `train_set` and `test_set`, `STATE_KEY` (the entry of the
    state file that holds `trainer.local_state()`) and `KIND` (the `Algorithm.kind` they run).
    """

    STATE_KEY = "local"
    KIND = ""
    trainer: Trainer
    train_set: Any
    test_set: Any

    def __init__(self, cfg: Config, name: str, manifest: Mapping[str, Any] | None, state_dir: str | Path | None):
        self.cfg, self.name = cfg, name
        self.algorithm: Algorithm = get_algorithm(cfg.algorithm)
        if manifest is None:
            if not cfg.data.manifest:
                raise DataError(
                    f"{name}: no data configured; set data.manifest to a partition manifest "
                    "(fedrsclip data partition ...)"
                )
            manifest = load_manifest(cfg.data.manifest)
        self.manifest = manifest
        self.classnames: list[str] = list(manifest["classes"])
        self.multi_label = label_kind(cfg, manifest, self.algorithm, name)
        self.state_path = state_file(state_dir, name) if state_dir else None
        # seconds spent building the site, by phase (protocol.TIMINGS): "load" (weights, state), "extract" (image
        # features: encoded or read from the cache); set by subclasses, reported with the first round
        self.setup_timings: dict[str, float] = {}
        self.dp_releases = 0  # DP releases of this site's shared prompt so far: counted here, kept in its state
        warning = dp_warning(cfg)
        if warning:
            log.warning("%s: %s", name, warning)

    @classmethod
    def load_shared(cls, cfg: Config) -> Any:
        """What every site of this kind in one process can share (the frozen CLIP), or None."""
        return None

    @property
    def description(self) -> str:
        """The model this site trains, for the results file (e.g. the backbone and its weights)."""
        raise NotImplementedError

    @property
    def weights(self) -> str | None:
        """What the model's starting weights are, as known (`Backbone.weights` for CLIP sites), or None."""
        return None

    def run_description(self, data: str) -> dict[str, str]:
        """The run's descriptions this site sends once (`protocol.DESCRIPTION_KEYS`); `data`: its description."""
        out = {
            "algorithm": self.cfg.algorithm,
            "backbone": self.description,
            "data": data,
            "data_source": self.cfg.data.source,
        }
        if self.weights is not None:
            out["weights"] = self.weights
        return out

    def split_items(self, split: str) -> list[tuple[Path, int]]:
        """This site's (path, label) items of a split; every file must exist."""
        items = site_split(self.manifest, self.name, split, root=self.cfg.data.root, multi_label=self.multi_label)
        missing = [p for p, _ in items if not (p.is_file() or p.is_dir())]  # a file, or a band-per-file patch
        if missing:
            raise DataError(
                f"{self.name}: {len(missing)} of {len(items)} {split} images are missing, e.g. "
                f"{missing[0]}; set data.root to the folder that holds the class folders"
            )
        return items

    @property
    def classes_fingerprint(self) -> str:
        """What the server compares across sites (`protocol.class_fingerprint`): this site's class list (and whether
        its scenes are multi-label)."""
        return class_fingerprint(self.classnames, multi_label=self.multi_label)

    # ---- local state (never sent) ----------------------------------------------------------------------------------
    def state_blob(self, round_idx: int | None = None, **extra: Any) -> dict[str, Any]:
        """The site-local state as saved on disk (with `extra` entries), and its checksum (`state_checksum`)."""
        blob = {
            "format": STATE_FORMAT,
            "round": round_idx,
            "classes": list(self.classnames),
            "dp_releases": self.dp_releases,
            self.STATE_KEY: self.trainer.local_state(),
            **extra,
        }
        return {**blob, "checksum": state_checksum(blob)}

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Refuse a saved state that belongs to another configuration (subclasses add checks)."""

    def load_state(self) -> bool:
        """Continue from the saved state, if there is one. PayloadError names the file and what is wrong with it
        (unreadable, another structure, a checksum that does not match, NaN, another configuration); the file is
        never changed then."""
        if self.state_path is None or not self.state_path.is_file():
            return False
        where = f"{self.name}: the saved state {self.state_path}"
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: refuse, never overwrite it with a fresh start
            raise PayloadError(f"{where} cannot be read ({exc})") from exc
        problem = state_problem(state, self.STATE_KEY)
        if problem:
            raise PayloadError(f"{where} {problem}")
        saved = state.get("classes")
        if saved is not None and list(saved) != self.classnames:
            raise PayloadError(
                f"{where} was trained on {len(saved)} classes "
                f"({', '.join(saved[:3])}, ...), this site's manifest has {len(self.classnames)} "
                f"({', '.join(self.classnames[:3])}, ...); use the manifest it was trained with"
            )
        self.check_state(state)
        try:
            self.trainer.load_local_state(state[self.STATE_KEY])
        except PayloadError as exc:
            raise PayloadError(f"{where} {exc}") from None
        self.dp_releases = int(state.get("dp_releases", 0))
        log.info(
            "%s: resumed local state from %s (round %s%s)",
            self.name,
            self.state_path,
            state.get("round"),
            "" if "checksum" in state else "; saved by an earlier version, without a checksum",
        )
        return True

    def save_state(self, round_idx: int) -> None:
        if self.state_path is not None:
            atomic_torch_save(self.state_path, self.state_blob(round_idx), mode=STATE_MODE)

    # ---- the round ---------------------------------------------------------------------------------------------------
    def dp_reference(self) -> np.ndarray | Mapping[str, np.ndarray] | None:
        """What the sent entries were as this round started: differential privacy noises the difference to it."""
        return None

    @property
    def fused(self) -> tuple[str, ...]:
        """The modalities whose adapters this site sends (MF): none for a site without adapters."""
        return ()

    def train(self, round_idx: int, peers: np.ndarray | None, should_abort: Callable[[], bool]):
        return self.trainer.train_round(self.train_set, round_idx, peers=peers, should_abort=should_abort)

    def evaluate(self, received: Payload | None = None) -> dict:
        """Accuracy on this site's own test split of the received global model (loaded, with the site's private
        part); of the site's current model when nothing is received (round 1, or `local`)."""
        if received:
            self.trainer.set_global(received)
        if self.test_set is None:
            return {"accuracy": float("nan"), "loss": float("nan"), "samples": 0}
        return self.trainer.evaluate(self.test_set)

    def evaluate_global(self, received: Payload | None = None) -> dict:
        """The global model alone on this site's test split (no site-local part; the full model's sites have none)."""
        return self.evaluate(received)

    def run_round(
        self,
        received: Payload | None,
        round_idx: int,
        peers: np.ndarray | None = None,
        should_abort: Callable[[], bool] = lambda: False,
        *,
        setup: Mapping[str, float] | None = None,
        state_continued: bool = True,
        description: Mapping[str, str] | None = None,
    ) -> Update:
        """One round (0-based `round_idx`): evaluate the received model, train, protect and check what leaves.

        `peers`: other sites' shared prompts [J, n_ctx, W] (dpac.negatives: peers, in-process only).
        `setup`, `state_continued`, `description`: what the runner knows about this task (the seconds of each
        phase before this round in this process, `protocol.TIMINGS`: start, load, extract; whether its state
        continued from earlier rounds; the run's descriptions).
        Raises PayloadError (a received model that does not fit), PrivacyError (nothing may be sent)."""
        start = time.perf_counter()
        evaluation = self.evaluate(received)
        evaluated = time.perf_counter()
        result = self.train(round_idx, peers, should_abort)
        releases = self.dp_releases + 1  # this round's release, if DP is on: counted here, never from round_idx
        result = protect_outgoing(result, self.cfg, self.name, round_idx, self.dp_reference(), releases)
        trained = time.perf_counter()
        timings = {**(setup or {}), "evaluate": evaluated - start, "train": trained - evaluated}
        record = RoundRecord(
            round=round_idx + 1,
            samples_train=int(result.num_samples),
            classes=self.classes_fingerprint,
            received=evaluation,
            metrics={**result.metrics, **self.data_metrics()},
            timings=timings,
            seconds=sum(timings.values()),
            bytes_up=payload_nbytes(result.payload),
            bytes_down=payload_nbytes(received or {}),
            state_continued=state_continued,
            description=description,
        )
        payload = check_outgoing(result.payload, self.algorithm, self.trainer.shapes, self.name, record, self.fused)
        if "dp_rounds" in result.metrics:
            self.dp_releases = releases  # saved with the state below, before anything leaves
        self.save_state(round_idx)
        return Update(payload, record)

    def data_metrics(self) -> dict[str, int]:
        """What the round record says about this site's data beyond the sample count: how many of its files could
        not be read (a count; which ones, and why, stay in its log)."""
        return {}

    def evaluate_modalities(self) -> dict[str, dict] | None:
        """In a multi-modal federation: {modality: the current model on this site's test split of that modality
        alone} (the missing-modality rows); None otherwise."""
        return None

    # ---- site-local results (never sent) -----------------------------------------------------------------------
    def predict_test(self) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
        """Test image paths (None when they cannot be matched to the predictions), true and predicted labels."""
        raise NotImplementedError

    def zero_shot(self) -> dict | None:
        """The zero-shot reference on this site's test split, when the model has one."""
        return None


class PromptSite(Site):
    """A prompt-learning site: cached CLIP image features and a PromptTrainer."""

    STATE_KEY = "prompts"
    KIND = "prompt"

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
        begin = time.perf_counter()
        self.backbone = backbone or open_backbone(cfg.model, cfg.data.cache_dir)  # warm: the text side only
        self.federation, self.modalities = federation_modalities(cfg, self.manifest, name)
        cache_dir = Path(cfg.data.cache_dir) / name
        loaded = time.perf_counter()
        splits = {}
        for split in ("train", "test"):
            items = self.split_items(split)
            splits[split] = self._features(items, split, cache_dir, progress) if items else None
        extracted = time.perf_counter()
        if backbone is None:  # this site's own CLIP: the image tower is no longer needed
            self.backbone.release_image_tower()
        if splits["train"] is None:
            raise DataError(f"{name}: the manifest gives this site no training images")
        self.whitening, self.mim = cfg.multimodal.modules(self.federation is not None)
        if self.whitening:
            splits = self._whiten(splits)
        self.train_set = splits["train"]
        self.test_set = splits["test"]
        self.trainer = PromptTrainer(
            cfg,
            self.backbone,
            self.classnames,
            site=name,
            multi_label=self.multi_label,
            modalities=self.federation or (),
            held=self.modalities,
            feature_dim=int(self.train_set.primary.global_feats.shape[-1]) if self.federation else None,
        )
        if not self.load_state():
            self.trainer.init_calibration(self.train_set)
        if self.federation:
            log.info(
                "%s: holds %s of the federation's modalities %s; MF %s, FW %s, MIM %s",
                name,
                "+".join(self.modalities),
                ", ".join(self.federation),
                _on(cfg.multimodal.fusion),
                _on(self.whitening),
                _on(self.mim),
            )
        self.setup_timings = {"load": loaded - begin + time.perf_counter() - extracted, "extract": extracted - loaded}

    def _features(self, items, split: str, cache_dir: Path, progress: bool) -> FeatureSet | ModalSet:
        """One split's cached features: a FeatureSet; in a multi-modal federation a ModalSet of every modality this
        site holds (its partner patches read through their own modality's composite)."""
        num_classes = len(self.classnames) if self.multi_label else None
        own = settings_from_config(
            self.cfg.data, self.modalities[0] if self.federation else self.manifest.get("modality")
        )
        first = cached_features(
            self.backbone, items, cache_dir, split, progress=progress, image=own, num_classes=num_classes
        )
        if not self.federation:
            return first
        partners = {}
        for modality in self.modalities[1:]:
            pairs = paired_split(self.manifest, self.name, split, modality, root=self.cfg.data.root)
            labels = dict((str(p), label) for p, label in items)
            partner_items = [(b, labels[str(a)]) for a, b in pairs]
            settings = image_settings(modality, max_pixels=self.cfg.data.max_pixels)
            features = cached_features(
                self.backbone,
                partner_items,
                cache_dir,
                f"{split}-{modality}",
                progress=progress,
                image=settings,
                num_classes=num_classes,
            )
            partners[modality] = (features, {str(a): str(b) for a, b in pairs})
        return ModalSet.align((self.modalities[0], first), partners, f"{self.name} {split}")

    def _whiten(self, splits: dict) -> dict:
        """FW: each modality whitened with statistics fitted on this site's own training features of it (kept here,
        never sent; refitted from the cached features at every start)."""
        train, test = splits["train"], splits["test"]
        views = train.sets if isinstance(train, ModalSet) else {self.modalities[0]: train}
        white: dict[str, dict] = {"train": {}, "test": {}}
        for modality, features in views.items():
            try:
                stats = fit_whitening(features, seed=self.cfg.train.seed)
            except ValueError as exc:
                raise DataError(f"{self.name}: {exc}") from None
            white["train"][modality] = whiten(features, stats)
            if test is not None:
                white["test"][modality] = whiten(test.sets[modality] if isinstance(test, ModalSet) else test, stats)
            log.info(
                "%s: FW for %s from %d training rows (shrinkage %.2f); the statistics stay at this site",
                self.name,
                modality,
                stats.pooled.samples,
                stats.pooled.shrinkage,
            )
        if isinstance(train, ModalSet):
            return {"train": ModalSet(white["train"]), "test": ModalSet(white["test"]) if test is not None else None}
        only = self.modalities[0]
        return {"train": white["train"][only], "test": white["test"].get(only)}

    @property
    def fused(self) -> tuple[str, ...]:
        return self.trainer.fused

    def data_metrics(self) -> dict[str, int]:
        skipped = len(self.train_set.skipped) + (len(self.test_set.skipped) if self.test_set is not None else 0)
        return {"skipped_images": skipped} if skipped else {}

    def evaluate_modalities(self) -> dict[str, dict] | None:
        if not self.federation or self.test_set is None:
            return None
        return self.trainer.evaluate_modalities(self.test_set)

    @classmethod
    def load_shared(cls, cfg: Config) -> Backbone:
        return load_remembered(cfg.model, cfg.data.cache_dir)  # a checkpoint file is hashed once, not per run

    @property
    def description(self) -> str:
        return self.backbone.description

    @property
    def weights(self) -> str:
        return self.backbone.weights

    @property
    def classes_fingerprint(self) -> str:
        """The class list and, when they are not the names, the class texts the prompts use (prompt.
        class_descriptions): sites with different description files must not be averaged together."""
        descriptions = self.trainer.model.learner.descriptions
        texts = class_texts(self.classnames, descriptions) if descriptions else None
        return class_fingerprint(
            self.classnames, None if texts == class_texts(self.classnames) else texts, multi_label=self.multi_label
        )

    def dp_reference(self) -> Mapping[str, np.ndarray] | None:
        # every entry sent, as the round started: a multi-modal site's adapters are clipped with its shared prompt
        return dict(self.trainer.round_start) or None

    def evaluate_global(self, received: Payload | None = None) -> dict:
        if received:
            self.trainer.set_global(received)
        return self.trainer.evaluate(self.test_set, shared_only=True)

    def predict_test(self) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
        _, pred = self.trainer.predict(self.test_set)
        return list(self.test_set.paths), self.test_set.labels.numpy(), pred.numpy()

    def zero_shot(self) -> dict | None:
        # the class texts of the learned prompts: prompt.class_descriptions when set, else the class names
        test = self.test_set.primary if isinstance(self.test_set, ModalSet) else self.test_set
        return zero_shot_accuracy(
            self.backbone, self.classnames, test, descriptions=self.trainer.model.learner.descriptions
        )


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def federation_modalities(
    cfg: Config, manifest: Mapping[str, Any], site: str
) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """(the federation's modalities or None, this site's own modalities, its records' modality first).

    The federation's: multimodal.modalities, else a multi-modal manifest's list, else None (one modality, no
    adapters). The site's: its entry in a multi-modal manifest, else its data (data.modality, or the manifest's).
    DataError when the site holds a modality the federation does not name, or declares another than its records'.
    """
    federation = cfg.multimodal.federation()
    multi = is_multi_modal(manifest)
    if federation is None and multi:
        federation = tuple(manifest.get("modalities") or ())
    if multi:
        held = site_modalities(manifest, site)
        if cfg.data.modality not in ("auto", held[0]):
            raise DataError(
                f"{site}: data.modality is {cfg.data.modality} but this site's records in the multi-modal "
                f"manifest are {held[0]} patches; set data.modality: auto (the manifest decides) or give "
                "this site its own manifest"
            )
    else:
        held = (settings_from_config(cfg.data, manifest.get("modality")).modality,)
    if federation is None:
        return None, held
    foreign = [m for m in held if m not in federation]
    if foreign:
        raise DataError(
            f"{site}: this site holds {'+'.join(held)} data but the federation's modalities are "
            f"{', '.join(federation)} (multimodal.modalities): every site's modality needs its adapter in "
            "the job; add it to multimodal.modalities (fedrsclip job --modalities)"
        )
    return federation, held

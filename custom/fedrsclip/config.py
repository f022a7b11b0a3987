"""One configuration schema for every entry point: the CLI, the in-process federation and the FLARE jobs.

A configuration is built from the defaults below, then a YAML file, then `section.key=value` overrides. Jobs
pass overrides, never copies. Unknown keys and wrong types stop with a message naming the setting.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .ot import OTConfig  # frozen and self-validating; FedOTP's values as defaults
from .ranges import check_ranges, ranged

SEED = "[0, 4294967296)"  # every seed: numpy's and torch's generators take it as it is
SOURCES = ("manifest", "synthetic", "synthetic-mm")
LOSSES = ("bce", "asl")


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says which setting and what to do."""


@dataclass
class ModelConfig:
    arch: str = "ViT-B-16"  # any open_clip model name (`open_clip.list_models()`)
    pretrained: str | None = "openai"  # a pretrained tag, a local checkpoint file, or null
    random_init: bool = False  # explicit opt-in to random weights (offline demo, tests)
    init_seed: int = ranged(0, SEED)  # seeds random weights so every site builds the same frozen CLIP
    # null: from the weights (a tag's open_clip entry, or a recognised checkpoint file: README "Backbones"); a file
    # that does not tell stops and asks for it. Random weights: off unless true.
    quick_gelu: bool | None = None
    # Text positions. null: the weights' own (77; 248 for Long-CLIP/LRSCLIP files). 248 on a 77-position CLIP
    # applies Long-CLIP's Knowledge-Preserved Stretching (fedrsclip.checkpoints.kps_stretch).
    context_length: int | None = ranged(None, "[2, inf)")
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cache_dir: str | None = None  # where open_clip keeps hub downloads
    # The prompt-learning text encoder on CUDA: fp32 | bf16 | fp16 (autocast; OT stays fp32). fp32 on the CPU.
    text_precision: str = "fp32"


@dataclass
class PromptConfig:
    # learnable context vectors per prompt: 4 x 512 = the paper's 2,048 shared values
    n_ctx: int = ranged(4, "[1, inf)")
    class_position: str = "middle"  # middle (paper, eq. 4) | end | front
    init: str = "random"  # "random" (N(0, 0.02), as CoOp) or a phrase such as "a satellite photo of"
    init_std: float = ranged(0.02, "[0, inf)")
    # A YAML or JSON file mapping each class name to a description used as the class text in the prompts and in
    # the zero-shot reference (fedrsclip.prompts.load_class_descriptions); null: the class names. Read where the
    # prompts are built: in a FLARE job, at every site (give a path that exists there).
    class_descriptions: str | None = None


@dataclass
class DPACConfig:
    weight: float = ranged(1.0, "[0, inf)")  # 0 turns DPAC off
    scale: float = ranged(10.0, "(0, inf)")  # s in eq. 9
    negatives: str = "classes"  # classes (no extra download) | peers (other sites' shared prompts, as the paper)


@dataclass
class TrainConfig:
    rounds: int = ranged(10, "[1, inf)")
    local_epochs: int = ranged(1, "[1, inf)")
    batch_size: int = ranged(32, "[1, inf)")  # paper
    eval_batch_size: int = ranged(100, "[1, inf)")  # paper
    lr: float = ranged(0.001, "(0, inf)")  # paper: SGD, lr 0.001
    momentum: float = ranged(0.9, "[0, 1)")
    weight_decay: float = ranged(0.0, "[0, inf)")
    fedprox_mu: float = ranged(0.01, "[0, inf)")  # used by `fedprox` only
    seed: int = ranged(0, SEED)
    # The largest change a site accepts from one received global shared prompt to the next, as the root mean square
    # per value (L2 norm / sqrt(values)); DP noise is allowed for on top. A larger one is refused as implausible: an
    # aggregate that mixes in a ciphertext made under another key decrypts to values around 1e7 (README Threat
    # model). Training moves the prompt far less (offline demo: 0.3 in round 1; lr 0.5 x 10 epochs: 3.6).
    max_global_change: float = ranged(10.0, "(0, inf)")
    # A resumed FLARE job: the folder holding each site's state from the earlier job ("{site}" becomes the site
    # name; relative to the site's workspace). A site without state of its own starts from a copy of it.
    resume_from: str | None = None


@dataclass
class DataConfig:
    manifest: str | None = None  # partition manifest (simulation); a deployed site sets its own root instead
    root: str | None = None  # overrides the manifest's root (where this site's images are)
    cache_dir: str = ".cache/fedrsclip-features"
    num_workers: int = ranged(0, "[0, inf)")
    # Where the images come from: "manifest" (data.manifest, the default) or "synthetic": every site generates the
    # same seeded synthetic dataset (fedrsclip.data.synth) and the same partition manifest over synthetic_sites
    # sites, then takes its part. No download, no preparation step (offline demo, tests). "synthetic-mm": the same
    # with synthetic_scenes multi-label scenes as Sentinel-2-like and Sentinel-1-like patches (fedrsclip.data.
    # synth_mm), each site holding the modalities multimodal.modalities gives it.
    source: str = "manifest"
    # null: as the manifest says; true / false: this run is for label sets (multi-label) / one class per image, and
    # a manifest of the other kind stops the site with a message.
    multi_label: bool | None = None
    synthetic_sites: int = ranged(10, "[1, inf)")  # sites the synthetic dataset is partitioned over (site-1 .. site-N)
    synthetic_classes: int = ranged(10, "[1, inf)")
    synthetic_per_class: int = ranged(40, "[1, inf)")
    synthetic_size: int = ranged(64, "[1, inf)")  # pixels
    synthetic_seed: int = ranged(0, SEED)  # images, train/test split and partition
    synthetic_scheme: str = "uniform"  # a partition scheme: uniform | label-skew | dirichlet
    synthetic_dir: str | None = None  # where to generate it; null: the caller's default (a FLARE site's workspace)
    synthetic_scenes: int = ranged(240, "[2, inf)")  # synthetic-mm: scenes (synthetic_size: a multiple of 6 px)
    # What the image encoder sees (fedrsclip.data.composite; README "Your imagery"). All of them are part of the
    # feature-cache key. `fedrsclip data preview FILE --set data.X=...` shows the result.
    modality: str = "auto"  # auto (the manifest's: s2/s1 for BigEarthNet and EuroSAT MS, else rgb) | rgb | s2 | s1
    composite: str | None = None  # null: the modality's default; a preset (true-color, false-color, swir, agriculture,
    #                               vv-vh-diff, vv, vh) or 3 comma-separated bands/expressions: B08,B04,B03  VV,VH,VV/VH
    scaling: str | None = None  # null: the modality's default (rgb auto, s2/s1 range) | auto | range | percentile
    scale_range: str | None = None  # scaling range: "low,high" for all channels or "l,h;l,h;l,h"; null: modality's
    stretch_low: float = ranged(
        2.0, "[0, 100]"
    )  # scaling percentile: each channel stretched between these percentiles of the image
    stretch_high: float = ranged(98.0, "[0, 100]")
    linear_to_db: bool = False  # SAR stored as linear power: 10 log10 before the composite, so dB ranges apply
    max_pixels: int = ranged(
        40_000_000, "[1, inf)"
    )  # larger images are skipped, checked from the header before decoding

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if self.source == "synthetic-mm" and isinstance(self.synthetic_size, int) and self.synthetic_size % 6:
            raise ValueError(
                f"data.synthetic_size must be a multiple of 6 for data.source: synthetic-mm (its "
                f"Sentinel-2 bands are at 10, 20 and 60 m); got {self.synthetic_size}: set e.g. 60"
            )
        if self.source != "manifest" and self.manifest:
            raise ValueError(
                f"data.manifest is set ({self.manifest}) but data.source is synthetic: set "
                "data.source: manifest to use the manifest, or data.manifest: null"
            )
        from .data.composite import check_image_settings  # the image settings' own rules, in one place

        check_image_settings(self)


@dataclass
class ClassifierConfig:
    """The paper's full-model FedAvg baseline: a plain timm image classifier, every weight sent."""

    arch: str = "vit_tiny_patch16_224"  # or efficientnet_b1, vit_base_patch16_224, efficientnet_b3
    pretrained: bool = False  # ImageNet weights from the hub; offline runs use random init
    image_size: int = ranged(224, "[1, inf)")
    lr: float = ranged(0.01, "(0, inf)")


@dataclass
class MultiLabelConfig:
    """Label sets per image (BigEarthNet; fedrsclip.multilabel): the loss on the class scores and its calibration."""

    loss: str = "bce"  # bce (binary cross-entropy) | asl (asymmetric loss, Ridnik et al. 2021, for imbalanced sets)
    gamma_pos: float = ranged(0.0, "[0, inf)")  # asl: focusing exponent of the positives
    gamma_neg: float = ranged(4.0, "[0, inf)")  # asl: focusing exponent of the negatives (the paper's 4)
    clip: float = ranged(0.05, "[0, 1)")  # asl: probability shift of the negatives (the paper's 0.05)
    bias_lr: float = ranged(0.1, "(0, inf)")  # SGD learning rate of the site's sigmoid calibration bias (never sent)


@dataclass
class MultiModalConfig:
    """Sites of different modalities in one federation (seed 002; README "Multi-modal federations")."""

    # The federation's modalities, per site: "s2,s1" (site-1 s2, site-2 s1, repeated over the sites), "s2+s1" a site
    # holding both (paired scenes). Every site builds an adapter for each of them; with data.source: synthetic-mm it
    # also says what each synthetic site holds. null: from a multi-modal manifest, else one modality (no adapters).
    modalities: str | None = None
    # The seed's three modules. null: on in a multi-modal federation (the seed's full framework), off otherwise.
    fusion: bool = True  # MF: each modality's adapter averaged among its sites; false: adapters stay at their site
    whitening: bool | None = None  # FW: each site whitens its features with its own statistics (never sent)
    mim: bool | None = None  # MIM: InfoNCE between the modalities' adapted features of paired scenes
    adapter_rank: int = ranged(16, "[1, inf)")  # the adapters' bottleneck (2 x rank x E values per modality)
    adapter_lr: float = ranged(0.05, "(0, inf)")  # SGD learning rate of the adapters
    mim_weight: float = ranged(0.5, "[0, inf)")
    mim_temperature: float = ranged(0.1, "(0, inf)")  # tau of the InfoNCE term

    def site_modalities(self) -> list[tuple[str, ...]] | None:
        """The `modalities` items as tuples ("s2+s1" -> ("s2", "s1")), None when unset; ValueError naming a bad one
        (fedrsclip.data.modalities.parse_site_modalities: the one parser of the list)."""
        if self.modalities is None:
            return None
        from .data.modalities import parse_site_modalities

        return parse_site_modalities(str(self.modalities))

    def modules(self, multi_modal: bool) -> tuple[bool, bool]:
        """(FW on, MIM on) for a run that is (or is not) a multi-modal federation: null follows it."""
        return (
            multi_modal if self.whitening is None else self.whitening,
            multi_modal if self.mim is None else self.mim,
        )

    def federation(self) -> tuple[str, ...] | None:
        """Every modality of the federation, in order of first mention; None when unset."""
        items = self.site_modalities()
        return None if items is None else tuple(dict.fromkeys(m for mods in items for m in mods))


@dataclass
class PrivacyConfig:
    """Opt-in differential privacy of what a site sends (fedrsclip.privacy), applied at the site before it leaves."""

    # L2 clip of the shared-prompt UPDATE (sent minus received); null: no DP
    dp_clip_norm: float | None = ranged(None, "(0, inf)")
    # Gaussian noise std = multiplier x clip norm (needs dp_clip_norm)
    dp_noise_multiplier: float = ranged(0.0, "[0, inf)")
    dp_delta: float = ranged(1e-5, "(0, 1)")  # the delta the accountant reports epsilon for
    # null: noise from OS entropy (secret); an int: reproducible noise per site and round
    dp_seed: int | None = ranged(None, SEED)


@dataclass
class Config:
    algorithm: str = "fedrsclip"
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    ot: OTConfig = field(default_factory=OTConfig)
    dpac: DPACConfig = field(default_factory=DPACConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    multilabel: MultiLabelConfig = field(default_factory=MultiLabelConfig)
    multimodal: MultiModalConfig = field(default_factory=MultiModalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> "Config":
        from .algorithms import ALGORITHMS

        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")
        _choice("prompt.class_position", self.prompt.class_position, ("middle", "end", "front"))
        _choice("dpac.negatives", self.dpac.negatives, ("classes", "peers"))
        _choice("model.text_precision", self.model.text_precision, ("fp32", "bf16", "fp16"))
        _choice("multilabel.loss", self.multilabel.loss, LOSSES)
        try:
            self.multimodal.site_modalities()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.multimodal.modalities is not None and ALGORITHMS[self.algorithm].kind != "prompt":
            able = ", ".join(a for a, spec in ALGORITHMS.items() if spec.kind == "prompt")
            raise ConfigError(
                f"multimodal.modalities is set but algorithm {self.algorithm} has no modality adapters "
                f"(multi-modal federations train prompts); use one of: {able}, or drop the modalities"
            )
        for section in fields(self):  # every numeric setting against the range declared next to it
            if dataclasses.is_dataclass(value := getattr(self, section.name)):
                try:
                    check_ranges(value, f"{section.name}.")
                except ValueError as exc:
                    raise ConfigError(str(exc)) from exc
        if self.data.source == "synthetic-mm":
            self._validate_synthetic_modalities()
        self._validate_privacy(ALGORITHMS[self.algorithm])
        if self.model.pretrained is None and not self.model.random_init:
            raise ConfigError(
                "model.pretrained is null but model.random_init is false: set model.pretrained to a pretrained tag "
                "(e.g. openai) or a local checkpoint file, or set model.random_init: true for a random-weights run"
            )
        return self

    def _validate_synthetic_modalities(self) -> None:
        """data.source synthetic-mm: the sites' modalities are ones the synthetic scenes have, one item per site at
        most (the items are repeated over data.synthetic_sites)."""
        from .data.modalities import SYNTHETIC_MODALITIES, parse_site_modalities

        if self.multimodal.modalities is None:
            raise ConfigError(
                "data.source is synthetic-mm but multimodal.modalities is null: say which modalities "
                "the synthetic sites hold, e.g. multimodal.modalities=s2,s1"
            )
        try:
            parse_site_modalities(str(self.multimodal.modalities), self.data.synthetic_sites, SYNTHETIC_MODALITIES)
        except ValueError as exc:
            raise ConfigError(f"{exc} (data.source synthetic-mm: synthetic S2/S1 scenes)") from None

    def _validate_privacy(self, algorithm) -> None:
        pc = self.privacy  # the values' ranges are checked with the others'
        if pc.dp_noise_multiplier > 0 and pc.dp_clip_norm is None:
            raise ConfigError(
                "privacy.dp_noise_multiplier is set but privacy.dp_clip_norm is null: the noise is "
                "scaled by the clip norm; set privacy.dp_clip_norm (e.g. 1.0)"
            )
        if pc.dp_clip_norm is not None and algorithm.kind == "classifier":
            raise ConfigError(
                f"privacy.dp_clip_norm: differential privacy is implemented for the prompt algorithms, "
                f"not {algorithm.name}; set privacy.dp_clip_norm: null"
            )


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field's annotation (str | None, int, float, bool)."""
    hints = typing.get_args(annotation) or (annotation,)
    if value is None:
        if type(None) in hints:
            return None
        raise ConfigError(f"{name} may not be null")
    for hint in hints:
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if hint is str and isinstance(value, (str, Path)):
            return str(value)
    expected = " or ".join(getattr(h, "__name__", str(h)) for h in hints)
    raise ConfigError(f"{name} must be {expected}; got {value!r}")


def _merge(obj: Any, values: Mapping[str, Any], prefix: str, source: str) -> Any:
    """A copy of the dataclass `obj` with `values` applied (sections may be frozen dataclasses)."""
    known = {f.name: f for f in fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown setting {name!r} in {source}; valid here: {', '.join(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} in {source} must be a mapping of settings, got {value!r}")
            changes[key] = _merge(current, value, f"{name}.", source)
        else:
            changes[key] = _coerce(name, value, hints[key])
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as exc:  # a section's own validation (e.g. OTConfig)
        raise ConfigError(f"{exc} (in {source})") from exc


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ["train.lr=0.01", "algorithm=fedprox"] into a nested mapping; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = nested
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r}: {part!r} is given a value of its own by another override; "
                    "set the settings inside it one by one (section.key=value)"
                )
        if isinstance(node.get(leaf), dict):
            raise ConfigError(
                f"override {item!r} replaces the section {leaf!r} that other overrides set; "
                "set its settings one by one (section.key=value)"
            )
        try:
            node[leaf] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({problem}); quote it if it is text, e.g. key='a: b'"
            ) from exc
    return nested


def read_yaml_mapping(path: Path, error: type[Exception] = ConfigError, what: str = "configuration file") -> dict:
    """A YAML file that must hold a mapping; `error` names the file and what is wrong."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise error(f"{what} {path} must hold a mapping of settings")
    return dict(loaded)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> Config:
    """Defaults, then the YAML file at `path`, then `overrides` (a nested mapping or `a.b=c` strings)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        cfg = _merge(cfg, read_yaml_mapping(path), "", str(path))
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(list(overrides))
        cfg = _merge(cfg, overrides, "", "overrides")
    return cfg.validate()

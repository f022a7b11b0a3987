"""What crosses the wire, defined once (numpy only): a site's update and its round record, the server's check of
an update, and the sample-weighted mean of eq. 6. Both runners (`fedrsclip.inprocess` and the FLARE job) and the
FLARE server use these; `fedrsclip.privacy.check_outgoing` checks every update against them before it leaves.

A site sends, per round, an `Update`:
  payload  {name: float32 array}: exactly its algorithm's `sends` (`fedrsclip.algorithms`), e.g. the shared prompt
  record   a `RoundRecord`: named fields only (sample count, class-list fingerprint, evaluation of the received
           model, training metrics, timings, bytes). Free-form parts hold only the names listed below
           (`EVALUATION_KEYS`, `TRAINING_METRICS`, `TIMINGS`) with numbers as values, so nothing else can ride
           along. Statistics of the raw update (its norm under DP, whether it was clipped) are never among them:
           they stay in the site's log.

The server never needs torch: this module, `fedrsclip.flare.constants` and the server components import numpy and
FLARE only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

SHARED = "shared_ctx"  # the shared prompt: sent by every site of a federated prompt algorithm

# A modality adapter's entries (multi-modal federations, fedrsclip.adapters): `adapter.<modality>.<parameter>`, sent
# only by the sites holding that modality (MF) and averaged only among them: each modality is an averaging group,
# every other entry (the shared prompt) belongs to the group COMMON, averaged across all sites.
ADAPTER_PREFIX = "adapter"
ADAPTER_PARAMETERS: tuple[str, ...] = ("down.weight", "up.weight")  # one adapter's tensors, in payload order
COMMON = "all"
_MODALITY_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

Payload = dict[str, np.ndarray]

# Names a record may carry (the allow-list of privacy.check_outgoing). To report a new metric, add its name here.
EVALUATION_KEYS = ("accuracy", "loss", "samples")  # of one model on a site's own test split, in table order
MULTILABEL_KEYS = ("micro_f1", "macro_f1", "mAP")  # multi-label evaluations add these (percent; accuracy is None)
TRAINING_METRICS = frozenset(
    {
        "train_loss",
        "train_ce",
        "train_dpac",
        "train_prox",
        "train_accuracy",
        "train_seconds",
        "steps",
        "train_bce",
        "train_asl",
        "train_mim",
        "mim_steps",  # multi-label loss; MIM (steps it was active in)
        "skipped_images",  # this site's train + test files that could not be read (a count; the files stay in its log)
        "dp_epsilon",
        "dp_delta",
        "dp_rounds",
        "dp_noise_std",  # derived from the settings, never from the update
    }
)
# Seconds per phase of a site's task, disjoint (their sum is the task's `seconds`): start (the site's process
# started until its first task arrived), load (weights, state), extract (image features, from the images or the
# cache), evaluate (the received model), train. The first three only in the first task of a process.
TIMINGS = frozenset({"start", "load", "extract", "evaluate", "train"})
# The run's descriptions: text for people (algorithm, backbone, data) and what is known for labels (weights:
# "random", "tag:<open_clip tag>" or "file:<sha256 prefix>"; data_source: "synthetic", "synthetic-mm" or "manifest").
DESCRIPTION_KEYS = frozenset({"algorithm", "backbone", "data", "weights", "data_source"})
EVALUATION_NAMES = frozenset({*EVALUATION_KEYS, *MULTILABEL_KEYS})


class PayloadError(ValueError):
    """A received model update does not fit this site's model (shape, dtype, non-finite values)."""


class ContributionError(ValueError):
    """An update (or its record) that must not be averaged into the global model."""


# ---- small shared helpers ------------------------------------------------------------------------------------------
def site_seed(seed: int, site: str) -> int:
    """A per-site seed that is stable across processes (`hash()` is salted per process)."""
    return (seed * 1_000_003 + int(hashlib.sha256(site.encode()).hexdigest()[:8], 16)) % (2**31)


def site_order(name: str) -> tuple:
    """Sort key: site-2 before site-10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def class_fingerprint(classnames: Sequence[str], texts: Sequence[str] | None = None, multi_label: bool = False) -> str:
    """A short, stable name of a class list ("K:sha256 prefix"), sent with each update: the server must never
    average prompts trained on different class lists (the prompts' shapes would not show it). `texts`: the class
    texts the prompts use when they are not the names (prompt.class_descriptions), so that sites with different
    description files are not averaged together either; None keeps the names-only fingerprint. `multi_label`:
    prompts trained for multi-label scenes are never averaged with prompts trained for one class per image (the
    same classes, another task)."""
    key: Any = list(classnames) if texts is None else [list(classnames), list(texts)]
    if multi_label:
        key = {"multi_label": key}
    return f"{len(classnames)}:{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]}"


# ---- averaging groups (multi-modal federations) --------------------------------------------------------------------
def adapter_key(modality: str, parameter: str) -> str:
    """`adapter.<modality>.<parameter>`: a payload key (and a state_dict name under a model's `adapter`)."""
    return f"{ADAPTER_PREFIX}.{modality}.{parameter}"


def adapter_keys(modalities: Iterable[str]) -> tuple[str, ...]:
    """Every payload key a site holding `modalities` sends for its adapters (the allow-list's adapter part)."""
    return tuple(adapter_key(m, p) for m in modalities for p in ADAPTER_PARAMETERS)


def key_group(key: str) -> str:
    """The averaging group of a payload key: its modality for `adapter.<m>.<parameter>`, else COMMON.

    ValueError for an `adapter.` key that is not `adapter.<modality name>.<parameter>`."""
    if not key.startswith(ADAPTER_PREFIX + "."):
        return COMMON
    parts = key.split(".", 2)
    if len(parts) != 3 or not _MODALITY_NAME.match(parts[1]) or parts[2] not in ADAPTER_PARAMETERS:
        raise ValueError(
            f"payload key {key!r} is not an adapter key adapter.<modality>.<parameter> with a "
            f"parameter in {', '.join(ADAPTER_PARAMETERS)}"
        )
    return parts[1]


def groups_of(keys: Iterable[str]) -> dict[str, list[str]]:
    """{group: its keys} of a payload's keys (COMMON for the shared prompt). ContributionError for a malformed
    adapter key or an adapter group without all of its parameters (half an adapter cannot be averaged)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        try:
            out.setdefault(key_group(key), []).append(key)
        except ValueError as exc:
            raise ContributionError(str(exc)) from None
    for group, members in out.items():
        if group != COMMON and sorted(members) != sorted(adapter_keys([group])):
            missing = sorted(set(adapter_keys([group])) - set(members))
            raise ContributionError(f"it sends part of the adapter of modality {group}: {', '.join(missing)} missing")
    return out


def signature_shapes(shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    """What every site's update must share whatever modalities it holds: the shapes of its COMMON entries and of
    its adapters' parameters, with the modality left out (`adapter.*.down.weight`). Sorted (key, shape) pairs."""
    out = {}
    for key, shape in shapes.items():
        group = key_group(key)
        out[key if group == COMMON else adapter_key("*", key.split(".", 2)[2])] = tuple(shape)
    return tuple(sorted(out.items()))


def lonely_groups(senders: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """{modality: its only sender} for every adapter group that exactly one site sent ({site: its payload keys}):
    with MF on, that "average" is the one site's own adapter, and every site receives it."""
    holders: dict[str, list[str]] = {}
    for site, keys in senders.items():
        for group in {key_group(k) for k in keys} - {COMMON}:
            holders.setdefault(group, []).append(site)
    return {group: sites[0] for group, sites in sorted(holders.items()) if len(sites) == 1}


def lonely_group_warning(modality: str, site: str, rnd: int) -> dict[str, Any]:
    """The results entry (and log line) for a modality whose adapter one site alone sent in round `rnd`."""
    return {
        "kind": "single_site_modality",
        "round": rnd,
        "modality": modality,
        "site": site,
        "message": f"the adapter of modality {modality} was sent by {site} alone in round {rnd}: with MF on "
        f"(multimodal.fusion) its 'average' is {site}'s own adapter, which every site receives "
        f"(under CKKS too, after decryption). Add another site holding {modality}, or set "
        "multimodal.fusion: false to keep every adapter at its site",
    }


def payload_nbytes(payload: Mapping[str, Any]) -> int:
    """Bytes of the payload's values (float32: 4 per value)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


def as_float32(value: Any) -> tuple[np.ndarray, int]:
    """`value` as the float32 array it travels and trains as, and how many of its entries are not finite there:
    NaN, +-inf, and values beyond float32's range (|x| > 3.4e38), which are finite in float64 but inf once cast."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(value).astype(np.float32)
    return out, int(out.size - np.count_nonzero(np.isfinite(out)))


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays become Python numbers and lists, NaN and +-inf become None
    (strict JSON has no token for them), tuples become lists, keys become strings."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(name: str, values: Any, allowed: frozenset[str]) -> dict[str, float | int | None]:
    """`values` as {allowed name: finite number or None}; ContributionError names what is not allowed."""
    if not isinstance(values, Mapping):
        raise ContributionError(f"record.{name} is a {type(values).__name__}, not a mapping")
    extra = sorted(set(map(str, values)) - allowed)
    if extra:
        raise ContributionError(
            f"record.{name} carries {extra[:5]}, which may not leave a site (allowed: {', '.join(sorted(allowed))})"
        )
    out: dict[str, float | int | None] = {}
    for key, value in values.items():
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, bool):
            value = int(value)
        if value is not None and not _number(value):
            raise ContributionError(f"record.{name}.{key} is {value!r}, not a number")
        out[str(key)] = None if value is None or not math.isfinite(value) else value
    return out


# ---- what a site sends ---------------------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """What travels with a site's update (FLARE: the DXO meta entry `fedrsclip`).

    `received` is the site's evaluation of the model it received at the start of this round, i.e. the global
    model after round `round - 1` (the initial model in round 1), with the site's private prompt: that is when a
    site can measure it (FLARE's LearnerExecutor does the same). `ResultsBook.add_update` files it there.
    """

    round: int  # 1-based round this update was trained in
    samples_train: int  # training samples: the aggregation weight (eq. 6)
    classes: str  # class_fingerprint of the site's class list: the server averages only one class list
    received: dict = field(default_factory=dict)  # EVALUATION_KEYS
    metrics: dict = field(default_factory=dict)  # TRAINING_METRICS
    timings: dict = field(default_factory=dict)  # TIMINGS, seconds
    seconds: float = 0.0  # the whole task at the site
    bytes_up: int = 0  # the payload as sent (CKKS: the ciphertext)
    bytes_down: int = 0  # the global model received (plaintext values)
    bytes_up_plain: int | None = None  # CKKS: the values the ciphertext encrypts
    encryption: str | None = None  # "ckks" or None
    state_continued: bool = True  # False: the site had no state from its earlier rounds (its private prompt restarted)
    description: dict | None = None  # DESCRIPTION_KEYS: on a site process's first upload only (it is the same later)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> "RoundRecord":
        """Types and names of every field; ContributionError says what is wrong (the allow-list of the record)."""
        for name in ("round", "samples_train", "bytes_up", "bytes_down"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ContributionError(f"record.{name} is {value!r}, not a count")
        if not isinstance(self.classes, str) or not re.fullmatch(r"\d+:[0-9a-f]{12}", self.classes):
            raise ContributionError(f"record.classes is {self.classes!r}, not a class-list fingerprint")
        self.received = _numbers("received", self.received, EVALUATION_NAMES)
        self.metrics = _numbers("metrics", self.metrics, TRAINING_METRICS)
        self.timings = _numbers("timings", self.timings, TIMINGS)
        if not _number(self.seconds) or not math.isfinite(self.seconds):
            raise ContributionError(f"record.seconds is {self.seconds!r}, not a number of seconds")
        if self.bytes_up_plain is not None and (not isinstance(self.bytes_up_plain, int) or self.bytes_up_plain < 0):
            raise ContributionError(f"record.bytes_up_plain is {self.bytes_up_plain!r}, not a count")
        if self.encryption not in (None, "ckks"):
            raise ContributionError(f"record.encryption is {self.encryption!r}")
        if not isinstance(self.state_continued, bool):
            raise ContributionError(f"record.state_continued is {self.state_continued!r}, not true or false")
        if self.description is not None:
            if (
                not isinstance(self.description, Mapping)
                or set(self.description) - DESCRIPTION_KEYS
                or not all(isinstance(v, str) for v in self.description.values())
            ):
                raise ContributionError(f"record.description must map {sorted(DESCRIPTION_KEYS)} to text")
            self.description = dict(self.description)
        return self

    def to_wire(self) -> dict[str, Any]:
        """A plain dict for FLARE's serializer; fields at their default are left out (every byte is sent)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING or value != default:
                out[f.name] = value
        return out

    @classmethod
    def from_wire(cls, data: Any) -> "RoundRecord":
        """The record a site sent; ContributionError when it is not one (unknown fields included)."""
        if not isinstance(data, Mapping):
            raise ContributionError(f"the round record is a {type(data).__name__}, not a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - names)
        if extra:
            raise ContributionError(f"the round record carries unknown fields {extra[:5]}")
        try:
            return cls(**dict(data))
        except TypeError as exc:  # a required field missing
            raise ContributionError(f"the round record is incomplete: {exc}") from None

    def results_entry(self) -> dict[str, Any]:
        """The per-site, per-round entry of the results file (fedrsclip.results_file)."""
        entry: dict[str, Any] = {
            "samples_train": self.samples_train,
            "seconds": self.seconds,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            **self.metrics,
        }
        if self.timings:
            entry["timings"] = dict(self.timings)
        if self.bytes_up_plain is not None:  # CKKS: bytes_up is the ciphertext, this the values it encrypts
            entry["bytes_up_plain"] = self.bytes_up_plain
        if not self.state_continued:
            entry["state_restarted"] = True
        return entry


@dataclass
class FinalRecord:
    """What a site sends after the final evaluation (FLARE: the validate task): the final global model's accuracy
    on its own test split, and where it keeps that model with its private prompt (a path at the site)."""

    received: dict
    seconds: float = 0.0
    bytes_down: int = 0
    final_state: str | None = None
    modalities: dict | None = None  # multi-modal sites: {modality: evaluation of that modality alone}

    def __post_init__(self) -> None:
        self.received = _numbers("received", self.received, EVALUATION_NAMES)
        if self.modalities is not None:
            if not isinstance(self.modalities, Mapping) or not all(
                isinstance(m, str) and _MODALITY_NAME.match(m) for m in self.modalities
            ):
                raise ContributionError("the final record's modalities must map modality names to evaluations")
            self.modalities = {m: _numbers(f"modalities.{m}", v, EVALUATION_NAMES) for m, v in self.modalities.items()}
        if not _number(self.seconds) or not isinstance(self.bytes_down, int):
            raise ContributionError("the final record's seconds or bytes_down is not a number")
        if self.final_state is not None and not isinstance(self.final_state, str):
            raise ContributionError("the final record's final_state is not a path")

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, data: Any) -> "FinalRecord":
        if not isinstance(data, Mapping) or set(data) - {f.name for f in dataclasses.fields(cls)}:
            raise ContributionError("the final record is not one (unknown or missing fields)")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ContributionError(f"the final record is incomplete: {exc}") from None


@dataclass
class Update:
    """A site's contribution to one round: what it sends."""

    payload: Payload
    record: RoundRecord

    @property
    def weight(self) -> int:
        return self.record.samples_train


@dataclass
class RoundResult:
    """A trainer's output for one round, before it is checked and sent."""

    payload: Payload  # what the trainer would send: its algorithm's `sends` entries
    num_samples: int  # training samples: the aggregation weight (eq. 6)
    metrics: dict = field(default_factory=dict)


class Trainer(Protocol):
    """What a site's trainer offers (fedrsclip.trainer.PromptTrainer, fedrsclip.baselines.classifier)."""

    site: str
    shapes: Mapping[str, tuple[int, ...]]  # name -> shape of every payload entry

    def payload(self) -> Payload: ...

    def set_global(self, payload: Mapping[str, np.ndarray]) -> None: ...

    def local_state(self) -> dict: ...

    def load_local_state(self, state: Mapping[str, Any]) -> None: ...

    def train_round(
        self, train: Any, round_idx: int = 0, peers: np.ndarray | None = None, should_abort: Any = ...
    ) -> RoundResult: ...

    def evaluate(self, test: Any) -> dict: ...


# ---- the server's side -----------------------------------------------------------------------------------------------
def check_update(data: Any, weight: Any, reference: Mapping[str, tuple[int, ...]] | None) -> dict[str, tuple]:
    """The shapes of a valid plaintext update; ContributionError says what is wrong with an invalid one.

    Valid: a dict of finite float arrays with a positive finite weight, every adapter group complete, and, when
    there is a `reference` (the global model's shapes), fitting it (`check_fits`)."""
    if not isinstance(data, Mapping):
        raise ContributionError(f"the update is a {type(data).__name__}, not a dict of arrays")
    shapes = {}
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise ContributionError(f"{key} is a {type(value).__name__}, not an array")
        if not np.issubdtype(value.dtype, np.floating):
            raise ContributionError(f"{key} has dtype {value.dtype}, expected floats")
        _, bad = as_float32(value)  # what the sites load: beyond float32's range is inf there
        if bad:
            raise ContributionError(
                f"{key} holds {bad} NaN or Inf values (of {value.size}; beyond float32's range counts as Inf)"
            )
        shapes[key] = tuple(value.shape)
    if weight is not None and (not _number(weight) or not math.isfinite(weight) or weight <= 0):
        raise ContributionError(f"its weight is {weight!r}, expected a positive number of training samples")
    groups_of(shapes)
    if reference:
        check_fits(shapes, reference)
    return shapes


def check_fits(shapes: Mapping[str, tuple], reference: Mapping[str, tuple]) -> None:
    """ContributionError unless an update of `shapes` fits the global model of `reference` shapes: the same COMMON
    entries; adapter groups of modalities the global model has, of its shapes; groups it does not have yet (a
    modality whose sites had no accepted update so far) of the shapes every adapter has."""
    common = {k for k in shapes if key_group(k) == COMMON}
    reference_common = {k for k in reference if key_group(k) == COMMON}
    if common != reference_common:
        raise ContributionError(f"its entries {sorted(shapes)} are not the global model's {sorted(reference)}")
    wrong = {k: v for k, v in shapes.items() if k in reference and tuple(v) != tuple(reference[k])}
    if wrong:
        key = next(iter(wrong))
        raise ContributionError(f"{key} has shape {wrong[key]}, the global model's is {tuple(reference[key])}")
    adapters = dict(signature_shapes({k: v for k, v in reference.items() if key_group(k) != COMMON}))
    for key, shape in signature_shapes({k: v for k, v in shapes.items() if key_group(k) != COMMON}):
        if adapters and adapters.get(key) != shape:
            raise ContributionError(
                f"its adapters' {key.split('.', 2)[2]} has shape {shape}, the global model's "
                f"adapters have {adapters.get(key)}"
            )


def weighted_mean(contributions: Iterable[tuple[Mapping[str, np.ndarray], float]]) -> Payload:
    """Eq. 6: sum_k w_k x_k / sum_k w_k per entry, over the contributions that carry it, with w_k a site's training
    samples. Accumulated in the order given, in the arrays' own precision (float32), exactly as FLARE's
    `WeightedAggregationHelper` does, so the in-process runner and the FLARE server give the same bits."""
    totals: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for data, weight in contributions:
        weight = float(weight)
        for key, value in data.items():
            value = np.asarray(value)
            if key in totals:
                totals[key] = totals[key] + value * weight
                weights[key] += weight
            else:
                totals[key] = value * weight
                weights[key] = weight
    if not totals:
        raise ValueError("no contributions to average")
    return {key: total * (1.0 / weights[key]) for key, total in totals.items()}


def summarize(site_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean and test-sample-weighted mean of per-site accuracies (sites with a finite accuracy and samples only);
    None when there is none. Multi-label evaluations add the same two for each of MULTILABEL_KEYS (mean_micro_f1,
    weighted_micro_f1, ...), only when some site reports them."""
    out: dict[str, float | None] = {}
    for metric in ("accuracy", *MULTILABEL_KEYS):
        usable = [
            (m[metric], m["samples"])
            for m in site_metrics.values()
            if _number(m.get(metric)) and math.isfinite(m[metric]) and m.get("samples")
        ]
        if not usable:
            if metric == "accuracy":
                out.update(mean_accuracy=None, weighted_accuracy=None)
            continue
        values, samples = zip(*usable)
        out[f"mean_{metric}"] = float(np.mean(values))
        out[f"weighted_{metric}"] = float(np.average(values, weights=samples))
    return out


def key_metric(evaluation: Mapping[str, Any]) -> str:
    """The metric that ranks models of a run: accuracy, or micro F1 for multi-label evaluations."""
    return "micro_f1" if evaluation.get("accuracy") is None and _number(evaluation.get("micro_f1")) else "accuracy"


def majority(values: Mapping[str, Any], weights: Mapping[str, float]) -> Any:
    """The most common of the sites' values; ties go to the larger total weight, then to the first site."""
    if not values:
        return None
    counts, total = Counter(values.values()), Counter()
    for site, value in values.items():
        total[value] += weights[site]
    first = {v: min((s for s in values if values[s] == v), key=site_order) for v in counts}
    return sorted(counts, key=lambda v: (-counts[v], -total[v], site_order(first[v])))[0]


def describe_signature(signature: Any) -> str:
    """A signature (sorted (key, shape) pairs, or another value) as text for a rejection message."""
    return (
        str(dict(signature))
        if isinstance(signature, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in signature)
        else str(signature)
    )


@dataclass
class Gate:
    """The rules every round's updates pass before they are combined, for both runners (FLARE: GatedAggregator).

    Each held update has a `signature` (what every site's update must share: its shapes; under CKKS also the key),
    its class-list fingerprint and its weight. The class list, and in round 1 the signature, are the majority's:
    updates are compared when the round closes, so one bad site answering first cannot lock the others out. The
    class list chosen in the first round holds for the rest of the run.
    """

    classes: str | None = None  # the federation's class list, fixed in its first round

    def refuse_minority(self, held: Mapping[str, tuple[Any, str | None, float]]) -> dict[str, str]:
        """{site: why} for the held updates ({site: (signature, classes, weight)}) that must be dropped."""
        weights = {s: w for s, (_, _, w) in held.items()}
        if self.classes is None:
            self.classes = majority({s: c for s, (_, c, _) in held.items()}, weights)
        refused = {
            s: f"trained on another class list ({c}; the federation's is {self.classes}): check this site's manifest"
            for s, (_, c, _) in held.items()
            if c != self.classes
        }
        rest = {s: sig for s, (sig, _, _) in held.items() if s not in refused}
        expected = majority(rest, weights)
        refused.update(
            {
                s: f"its update {describe_signature(sig)} differs from the other sites' {describe_signature(expected)}"
                for s, sig in rest.items()
                if sig != expected
            }
        )
        return refused

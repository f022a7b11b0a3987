"""The algorithms, as configurations of one trainer: which prompts a site learns, how classes are scored, which
extra losses apply, and what leaves the site.

Scoring: "cosine" is CoOp's cos(global image feature, prompt text feature) (eq. 5; with two prompts, the mean of
both prompts' logits); "ot" is CMFAC, 1 - d_OT between patch tokens and the prompts' text features (eq. 15);
"uniform" is the same with a uniform transport plan (the OT-vs-uniform ablation).

Every prompt algorithm trains single-label scenes with cross-entropy and multi-label scenes (label sets: BigEarthNet)
with the multi-label loss of `fedrsclip.multilabel`, as the manifest says; in a multi-modal federation it also
learns one adapter per modality (`fedrsclip.adapters`; the `multimodal` settings: MF, FW, MIM).

To add an algorithm that combines these switches, add a row below. One that needs a new mechanism: its loss or
score in `fedrsclip.trainer` (the method in one file), its switch here, and, when it sends anything new, the entry
names in `sends` (checked at the site by `fedrsclip.privacy.check_outgoing`). A new kind of model (a new `kind`)
gets its site and trainer in `fedrsclip.factory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import SHARED, adapter_keys

ALL_WEIGHTS = ("*",)  # `sends` of a full-model algorithm: every weight its trainer lists (trainer.shapes)


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    kind: str = "prompt"  # which site and trainer run it: a key of fedrsclip.factory.SITES
    dual: bool = True  # shared + private prompts; False: one shared prompt
    scoring: str = "ot"  # ot | uniform | cosine
    dpac: bool = True
    proximal: bool = False
    sends: tuple[str, ...] = (SHARED,)  # payload entries that leave a site; ALL_WEIGHTS; (): nothing (local)
    labels: tuple[str, ...] = ("single", "multi")  # the label kinds it trains: one class per image, label sets

    @property
    def federated(self) -> bool:
        """False: nothing is sent, nothing is aggregated."""
        return bool(self.sends)

    def outgoing(self, fused: tuple[str, ...] = ()) -> tuple[str, ...]:
        """What a site sends: `sends`, and in a multi-modal federation with MF on (multimodal.fusion) the adapter
        of each modality it holds (`fused`; fedrsclip.adapters), averaged among that modality's sites only."""
        if not self.federated or self.sends == ALL_WEIGHTS:
            return self.sends
        return (*self.sends, *adapter_keys(fused))

    @property
    def prompts(self) -> tuple[str, ...]:
        return ("shared", "private") if self.dual else ("shared",)


_ALL = [
    Algorithm("fedrsclip", "FedRSCLIP: shared + private prompts, DPAC, CMFAC (optimal transport)"),
    Algorithm("fedrsclip-spm", "ablation: one (standard) prompt instead of dual, CMFAC kept", dual=False, dpac=False),
    Algorithm("fedrsclip-no-dpac", "ablation: without the dual prompt alignment constraint", dpac=False),
    Algorithm(
        "fedrsclip-no-cmfac", "ablation: without CMFAC (cosine scores on the global image feature)", scoring="cosine"
    ),
    Algorithm("fedrsclip-uniform-plan", "ablation: uniform transport plan instead of OT", scoring="uniform"),
    Algorithm("fedavg-pl", "FedAvg of one CoOp prompt (prompt learning)", dual=False, scoring="cosine", dpac=False),
    Algorithm(
        "fedprox",
        "FedAvg-PL with a proximal term mu/2 ||w - w_global||^2",
        dual=False,
        scoring="cosine",
        dpac=False,
        proximal=True,
    ),
    # FedOTP = global + local prompts through OT, no DPAC: by construction the same model as fedrsclip-no-dpac.
    Algorithm("fedotp", "FedOTP: global + local prompts with unbalanced OT, no DPAC", dpac=False),
    Algorithm(
        "local",
        "local training only (one CoOp prompt per site, nothing sent)",
        dual=False,
        scoring="cosine",
        dpac=False,
        sends=(),
    ),
    Algorithm(
        "fedavg-full",
        "FedAvg of a full timm image classifier (the paper's parameter-transfer baseline)",
        kind="classifier",
        dual=False,
        scoring="cosine",
        dpac=False,
        sends=ALL_WEIGHTS,
        labels=("single",),
    ),
]

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALL}


CENTRALIZED = "centralized"  # not an algorithm: every site's data pooled at one site (data.manifest.centralized)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called `name`; ValueError listing the valid names otherwise."""
    if name == CENTRALIZED:
        raise ValueError(
            "'centralized' is a data arrangement, not an algorithm: `fedrsclip run --centralized` (or "
            "the experiment's `--sites centralized` column) trains any algorithm on every site's data "
            "pooled at one site"
        )
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None

"""The algorithms, as configurations of one trainer: which prompts a site learns, how classes are scored, which
extra losses apply, and what leaves the site.

Scoring: "cosine" is CoOp's cos(global image feature, prompt text feature) (eq. 5; with two prompts, the mean of
both prompts' logits); "ot" is CMFAC, 1 - d_OT between patch tokens and the prompts' text features (eq. 15);
"uniform" is the same with a uniform transport plan (the OT-vs-uniform ablation).
"""

from __future__ import annotations

from dataclasses import dataclass

SHARED = "shared_ctx"  # the only prompt a site may send


@dataclass(frozen=True)
class Algorithm:
    name: str
    description: str
    kind: str = "prompt"  # prompt | classifier
    dual: bool = True  # shared + private prompts; False: one shared prompt
    scoring: str = "ot"  # ot | uniform | cosine
    dpac: bool = True
    proximal: bool = False
    federated: bool = True  # False: nothing is sent, nothing is aggregated

    @property
    def sends(self) -> tuple[str, ...]:
        """Payload keys that leave the site; classifier algorithms send every weight (listed by the trainer)."""
        if not self.federated:
            return ()
        return ("*",) if self.kind == "classifier" else (SHARED,)

    @property
    def prompts(self) -> tuple[str, ...]:
        return ("shared", "private") if self.dual else ("shared",)


_ALL = [
    Algorithm("fedrsclip", "FedRSCLIP: shared + private prompts, DPAC, CMFAC (optimal transport)"),
    Algorithm("fedrsclip-spm", "ablation: one (standard) prompt instead of dual, CMFAC kept", dual=False, dpac=False),
    Algorithm("fedrsclip-no-dpac", "ablation: without the dual prompt alignment constraint", dpac=False),
    Algorithm("fedrsclip-no-cmfac", "ablation: without CMFAC (cosine scores on the global image feature)",
              scoring="cosine"),
    Algorithm("fedrsclip-uniform-plan", "ablation: uniform transport plan instead of OT", scoring="uniform"),
    Algorithm("fedavg-pl", "FedAvg of one CoOp prompt (prompt learning)", dual=False, scoring="cosine", dpac=False),
    Algorithm("fedprox", "FedAvg-PL with a proximal term mu/2 ||w - w_global||^2", dual=False, scoring="cosine",
              dpac=False, proximal=True),
    # FedOTP = global + local prompts through OT, no DPAC: by construction the same model as fedrsclip-no-dpac.
    Algorithm("fedotp", "FedOTP: global + local prompts with unbalanced OT, no DPAC", dpac=False),
    Algorithm("local", "local training only (one CoOp prompt per site, nothing sent)", dual=False,
              scoring="cosine", dpac=False, federated=False),
    Algorithm("centralized", "FedRSCLIP's model trained on all data at one site (use a 1-site manifest)"),
    Algorithm("fedavg-full", "FedAvg of a full timm image classifier (the paper's parameter-transfer baseline)",
              kind="classifier", dual=False, scoring="cosine", dpac=False),
]

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in _ALL}


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None

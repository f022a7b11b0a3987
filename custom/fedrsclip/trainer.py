"""The method in one file (as CoOp's trainer): the class scores, the loss, and one site's local training and
evaluation for one round. Plain PyTorch, no FLARE. The pieces it assembles: `prompts.py` (the prompt learner and
text encoder), `ot.py` (CMFAC's transport), `losses.py` (DPAC, the proximal term), and for multi-label scenes and
multi-modal federations (docs/multimodal.md) `multilabel.py` (sigmoid calibration, BCE/ASL, F1 and mAP),
`adapters.py` (one adapter per modality) and `mim.py` (InfoNCE between paired modalities).

Per step only the text encoder runs (K classes x 1 or 2 prompts); image features come from the cache. The loss is
cross-entropy on the class scores (cosine, or CMFAC's 1 - d_OT), plus DPAC for dual prompts, plus the proximal
term for FedProx. Multi-label scenes replace cross-entropy by the multi-label loss on the calibrated scores. In a
multi-modal federation a site's features pass its modality's adapter first; a site holding several modalities of
the same scenes sums their losses, plus MIM (multimodal.mim). The optimisers (SGD) are created afresh each round so
no momentum leaks between rounds or sites.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .adapters import ModalityAdapters
from .algorithms import SHARED, Algorithm, get_algorithm
from .backbone import Backbone
from .config import Config
from .features import FeatureSet
from .losses import dpac_loss, dpac_loss_classes, peer_negatives, proximal_term
from .mim import info_nce
from .multilabel import SigmoidCalibration, multilabel_loss, multilabel_metrics
from .multimodal import ModalSet, evaluate_modality
from .ot import ot_scores
from .prompts import PromptLearner
from .protocol import COMMON, Payload, PayloadError, RoundResult, as_float32, key_group, site_seed
from .sgd import SGD

Features = FeatureSet | ModalSet  # one modality (no adapters), or a site's split in a multi-modal federation

log = logging.getLogger(__name__)


class PromptModel(torch.nn.Module):
    """Prompt learner + the algorithm's class scoring over cached image features."""

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        cfg: Config,
        algorithm: Algorithm,
        seed: int,
        private_seed: int,
        multi_label: bool = False,
        modalities: tuple[str, ...] = (),
        feature_dim: int | None = None,
    ):
        super().__init__()
        self.learner = PromptLearner(
            backbone, classnames, cfg.prompt, dual=algorithm.dual, seed=seed, private_seed=private_seed
        ).to(backbone.device)
        self.algorithm = algorithm
        self.ot = cfg.ot
        self.logit_scale = backbone.logit_scale
        self.device = backbone.device
        # Multi-modal federation: one adapter per modality of the federation (named `adapter`, so its state names
        # are the payload keys); every site starts each from the same seed. Multi-label: the site's sigmoid bias.
        self.adapter = (
            ModalityAdapters(modalities, feature_dim, cfg.multimodal.adapter_rank, seed=seed).to(backbone.device)
            if modalities
            else None
        )
        self.calibration = SigmoidCalibration(len(classnames)).to(backbone.device) if multi_label else None

    def adapt(
        self, modality: str | None, pooled: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The modality's adapter on pooled [B, E] and tokens [B, V, E]; unchanged without adapters."""
        if self.adapter is None or modality is None:
            return pooled, tokens
        return self.adapter.adapt(modality, pooled), self.adapter.adapt(modality, tokens)

    def scores(self, global_feats: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K] from image features and text features [P, K, E]."""
        if self.algorithm.scoring == "cosine":
            image = F.normalize(global_feats.float(), dim=-1)
            sims = torch.einsum("be,pke->pbk", image, F.normalize(text.float(), dim=-1))
            return self.logit_scale * sims.mean(0)
        return self.logit_scale * ot_scores(tokens, text, self.ot, plan=self.algorithm.scoring)


class PromptTrainer:
    """One site's prompt model: receives the global shared prompt, trains locally, returns its shared prompt."""

    def __init__(
        self,
        cfg: Config,
        backbone: Backbone,
        classnames: list[str],
        site: str = "site-1",
        *,
        multi_label: bool = False,
        modalities: tuple[str, ...] = (),
        held: tuple[str, ...] = (),
        feature_dim: int | None = None,
    ):
        """multi_label: the site's scenes carry label sets. modalities: the federation's (an adapter each; () for a
        federation of one modality); held: this site's own, in its ModalSets' order (trained; sent under MF).
        feature_dim: E of the cached image features (the adapters' width)."""
        self.cfg = cfg
        self.algorithm = get_algorithm(cfg.algorithm)
        self.site = site
        self.seed = site_seed(cfg.train.seed, site)
        self.multi_label = multi_label
        self.held = tuple(held) if modalities else ()
        self.model = PromptModel(
            backbone,
            classnames,
            cfg,
            self.algorithm,
            seed=cfg.train.seed,
            private_seed=self.seed,
            multi_label=multi_label,
            modalities=tuple(modalities),
            feature_dim=feature_dim,
        )
        self.device = backbone.device
        self.round_start: Payload = {}  # what was sent, as the round started (the DP reference)
        self.mim = cfg.multimodal.modules(bool(modalities))[1]
        self.mim_note: str | None = None  # why MIM did nothing in the last round (logged), when it was asked for

    @property
    def fused(self) -> tuple[str, ...]:
        """The modalities whose adapters this site sends (MF on): its own; () when MF is off or there are none."""
        return self.held if self.cfg.multimodal.fusion else ()

    @property
    def round_start_shared(self) -> np.ndarray | None:
        return self.round_start.get(SHARED)

    # ---- what crosses the wire -------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry this model may send or receive (as ClassifierTrainer.shapes): the shared
        prompt, and in a multi-modal federation every modality's adapter."""
        out = {SHARED: tuple(self.model.learner.shared_ctx.shape)}
        if self.model.adapter is not None:
            out.update({k: tuple(v.shape) for k, v in self.model.adapter.payload(self.model.adapter).items()})
        return out

    def payload(self) -> Payload:
        out = {SHARED: self.model.learner.shared_ctx.detach().cpu().numpy().astype(np.float32)}
        if self.fused:
            out.update(self.model.adapter.payload(self.fused))
        return out

    def set_global(self, payload: Payload) -> None:
        """Load the aggregated shared prompt (and, in a multi-modal federation, every modality's adapter the global
        model holds: a site may evaluate a modality it does not hold); refuses (loading nothing) anything that does
        not fit or is implausible: a wrong shape or dtype, values that are not finite as float32, or a change from
        the previous global shared prompt beyond `global_change_bound` (PayloadError naming the received payload)."""
        if SHARED not in payload:
            raise PayloadError(f"{self.site}: the global model has no {SHARED!r} (keys: {sorted(payload)})")
        unexpected = sorted(k for k in payload if k not in self.shapes)
        if unexpected:
            raise PayloadError(
                f"{self.site}: the global model holds {unexpected[:3]}, which this model does not have "
                "(check that every site runs the same job: multimodal.modalities, algorithm)"
            )
        param = self.model.learner.shared_ctx
        value = np.asarray(payload[SHARED])
        if value.shape != tuple(param.shape):
            raise PayloadError(
                f"{self.site}: received {SHARED} of shape {value.shape}, this model needs "
                f"{tuple(param.shape)} (check model.arch and prompt.n_ctx match the job's)"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise PayloadError(f"{self.site}: received {SHARED} of dtype {value.dtype}, expected floats")
        value, bad = as_float32(value)  # checked as it will be used: 1e39 is finite in float64, inf in float32
        if bad:
            raise PayloadError(
                f"{self.site}: the received global {SHARED} holds {bad} NaN or Inf values (of "
                f"{value.size}; beyond float32's range counts as Inf); not loaded"
            )
        reference = self.round_start_shared if self.round_start_shared is not None else param.detach().cpu().numpy()
        change = rms_change(value, reference)
        bound = self.global_change_bound()
        if not change <= bound:
            raise PayloadError(
                f"{self.site}: the received global {SHARED} is implausible: it differs from the previous global "
                f"shared prompt by {change:.3g} (root mean square per value; largest value {np.abs(value).max():.3g}), "
                f"more than the {bound:.3g} this site accepts (train.max_global_change"
                f"{', plus the DP noise allowance' if self.cfg.privacy.dp_clip_norm is not None else ''}); not "
                "loaded. Under CKKS this is what an aggregate containing an update encrypted under another key "
                "decrypts to: check that every site has the same client context; raise train.max_global_change "
                "only if such a change is expected"
            )
        if self.model.adapter is not None:  # checked whole before anything is loaded (`load_payload`)
            adapters = {k: v for k, v in payload.items() if key_group(k) != COMMON}
            self._check_adapter_change(adapters)
            try:
                self.model.adapter.load_payload(adapters)
            except ValueError as exc:
                raise PayloadError(f"{self.site}: {exc}; not loaded") from None
        with torch.no_grad():
            param.copy_(torch.from_numpy(value))

    def _check_adapter_change(self, adapters: Payload) -> None:
        """The plausibility bound of the shared prompt, per modality's adapter: the received group against the
        adapter as this round started (this site's own) or as last received (the others'). Groups that do not fit
        in shape are left to `load_payload`'s message. PayloadError names the modality."""
        current = self.model.adapter.payload(self.model.adapter)
        groups: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for key, value in adapters.items():
            reference = self.round_start.get(key, current.get(key))
            value = np.asarray(value)
            if reference is None or value.shape != reference.shape or not np.issubdtype(value.dtype, np.floating):
                continue
            received, before = groups.setdefault(key_group(key), ([], []))
            received.append(value.astype(np.float64).ravel())
            before.append(np.asarray(reference, dtype=np.float64).ravel())
        for modality, (received, before) in groups.items():
            values = np.concatenate(received)
            change = rms_change(values, np.concatenate(before))
            bound = self.global_change_bound(values.size)
            if change > bound:  # NaN (NaN values) is left to load_payload's message
                raise PayloadError(
                    f"{self.site}: the received global adapter of modality {modality} is implausible: it differs "
                    f"from the previous one by {change:.3g} (root mean square per value), more than the {bound:.3g} "
                    "this site accepts (train.max_global_change); not loaded"
                )

    def global_change_bound(self, values: int | None = None) -> float:
        """The largest root-mean-square change per value from one global shared prompt (or adapter: `values` of
        them) to the next that this site accepts: train.max_global_change, plus with DP the most the clipped, noised
        updates can move the mean (a site's update: at most C in L2 norm plus Gaussian noise of std sigma*C on each
        of its n values, whose root mean square exceeds sigma*C*(1 + 5/sqrt(2n)) with probability below 1e-6; the
        mean over sites has less)."""
        bound = self.cfg.train.max_global_change
        pc = self.cfg.privacy
        if pc.dp_clip_norm is not None:
            values = values or int(np.prod(self.model.learner.shared_ctx.shape))
            noise = pc.dp_noise_multiplier * pc.dp_clip_norm * (1 + 5 / np.sqrt(2 * values))
            bound += pc.dp_clip_norm / np.sqrt(values) + noise
        return float(bound)

    # ---- site-local state (never sent) --------------------------------------------------------------------
    def local_state(self) -> dict[str, torch.Tensor]:
        learner = self.model.learner
        state = {"shared_ctx": learner.shared_ctx.detach().cpu().clone()}
        if learner.private_ctx is not None:
            state["private_ctx"] = learner.private_ctx.detach().cpu().clone()
        for part in ("adapter", "calibration"):  # every modality's adapter (MF off: the only copy), the sigmoid bias
            module = getattr(self.model, part)
            if module is not None:
                state.update({f"{part}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()})
        return state

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what `local_state` saved: exactly this model's prompts (and its adapters and sigmoid bias, when it
        has them), of its shapes, finite as float32; PayloadError says what does not fit (nothing is loaded then)."""
        learner = self.model.learner
        params = {
            name: getattr(learner, name) for name in ("shared_ctx", "private_ctx") if getattr(learner, name) is not None
        }
        modules = {
            part: getattr(self.model, part)
            for part in ("adapter", "calibration")
            if getattr(self.model, part) is not None
        }
        expected = {
            **params,
            **{f"{part}.{k}": v for part, module in modules.items() for k, v in module.state_dict().items()},
        }
        prompts = sorted(k for k in state if k.split(".", 1)[0] not in ("adapter", "calibration"))
        if prompts != sorted(params):
            raise PayloadError(
                f"holds the prompts {prompts}, this model has {sorted(params)} (algorithm "
                f"{self.algorithm.name}); it was saved by another algorithm"
            )
        if set(state) != set(expected):
            raise PayloadError(
                f"holds the entries {sorted(set(state) - set(params))[:4]}, this model has "
                f"{sorted(set(expected) - set(params))[:4]}; the configuration (multimodal.modalities, "
                "multimodal.adapter_rank, the manifest's label kind) changed since it was saved"
            )
        values = {}
        for name, param in expected.items():
            value = state[name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise PayloadError(f"holds {name} as {type(value).__name__}, not a float tensor")
            if tuple(value.shape) != tuple(param.shape):
                raise PayloadError(
                    f"holds {name} of shape {tuple(value.shape)}, the model needs {tuple(param.shape)}; "
                    "the configuration changed since it was saved"
                )
            values[name] = value.to(param.dtype)  # checked as it is used
            if not torch.isfinite(values[name]).all():
                raise PayloadError(f"holds {name} with NaN or Inf values (beyond float32's range counts as Inf)")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(values[name])
        for part, module in modules.items():
            module.load_state_dict({k[len(part) + 1 :]: v for k, v in values.items() if k.startswith(part + ".")})

    @torch.no_grad()
    def init_calibration(self, train: Features) -> None:
        """Start the sigmoid bias from the site's training scores (fedrsclip.multilabel.SigmoidCalibration.init_from);
        every modality a site holds counts."""
        if self.model.calibration is None:
            return
        self.model.eval()
        text = self.model.learner.text_features()
        logits, targets = [], []
        for modality, features in _views(train):
            logits.append(self._scores(features, modality, text))
            targets.append(features.labels)
        self.model.calibration.init_from(torch.cat(logits), torch.cat(targets))

    # ---- training -----------------------------------------------------------------------------------------------
    def _label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[str, torch.Tensor]:
        """("ce", cross-entropy) on class indices [B]; ("bce" or "asl", the multi-label loss) on multi-hot [B, K]."""
        if self.model.calibration is None:
            return "ce", F.cross_entropy(logits, labels)
        ml = self.cfg.multilabel
        z = self.model.calibration(logits)
        if ml.loss == "bce":
            return "bce", multilabel_loss(z, labels)
        return "asl", multilabel_loss(z, labels, ml.gamma_pos, ml.gamma_neg, ml.clip)

    def _loss(self, text: torch.Tensor, batches, peers, anchor) -> tuple[torch.Tensor, dict]:
        """batches: [(modality or None, pooled [B, E], tokens [B, V, E], labels)], one per modality the site holds,
        row i of each the same scene."""
        parts: dict[str, torch.Tensor] = {}
        adapted = []
        for modality, pooled, tokens, labels in batches:
            pooled, tokens = self.model.adapt(modality, pooled, tokens)
            adapted.append(pooled)
            name, value = self._label_loss(self.model.scores(pooled, tokens, text), labels)
            parts[name] = parts[name] + value if name in parts else value  # the modalities' losses summed
        mm = self.cfg.multimodal
        if self.mim and len(adapted) >= 2:
            term = info_nce(adapted[0], adapted[1], mm.mim_temperature)
            if term.active:
                parts["mim"] = mm.mim_weight * term.loss
            else:
                self.mim_note = term.reason
        if self.algorithm.dpac and self.algorithm.dual and self.cfg.dpac.weight > 0:
            shared, private = text[0], text[1]
            if self.cfg.dpac.negatives == "peers":
                negatives = (
                    peer_negatives(peers)
                    if peers is not None
                    else shared.new_zeros(shared.shape[0], 0, shared.shape[1])
                )
                dpac = dpac_loss(private, shared, negatives, self.cfg.dpac.scale)
            else:
                dpac = dpac_loss_classes(private, shared, self.cfg.dpac.scale)
            parts["dpac"] = self.cfg.dpac.weight * dpac
        if self.algorithm.proximal:
            parts["prox"] = proximal_term([self.model.learner.shared_ctx], [anchor], self.cfg.train.fedprox_mu)
        return sum(parts.values()), parts

    def _optimizers(self) -> list[SGD]:
        """SGD for the prompts (train.lr), the adapters of the site's own modalities (multimodal.adapter_lr) and the
        sigmoid bias (multilabel.bias_lr): torch.optim's update, lighter."""
        tc = self.cfg.train
        groups = [(list(self.model.learner.contexts), tc.lr)]
        if self.model.adapter is not None and self.held:
            groups.append(
                ([p for m in self.held for p in self.model.adapter[m].parameters()], self.cfg.multimodal.adapter_lr)
            )
        if self.model.calibration is not None:
            groups.append(([self.model.calibration.bias], self.cfg.multilabel.bias_lr))
        return [SGD(params, lr=lr, momentum=tc.momentum, weight_decay=tc.weight_decay) for params, lr in groups]

    def train_round(
        self,
        train: Features,
        round_idx: int = 0,
        peers: np.ndarray | None = None,
        should_abort: Callable[[], bool] = lambda: False,
    ) -> RoundResult:
        """Local epochs on the cached training features (a ModalSet in a multi-modal federation: every modality of
        a batch's scenes). `peers`: other sites' shared prompts [J, n_ctx, W]."""
        tc = self.cfg.train
        learner = self.model.learner
        optimizers = self._optimizers()
        anchor = learner.shared_ctx.detach().clone()
        self.round_start = self.payload() if self.algorithm.federated else {}  # the received global (round 1: init)
        self.mim_note = None
        views = _views(train)
        peer_feats = None
        if peers is not None and len(peers):
            with torch.no_grad():
                peer_ctx = [torch.as_tensor(p, dtype=torch.float32, device=self.device) for p in peers]
                peer_feats = learner.text_features(peer_ctx)
        gen = torch.Generator().manual_seed(site_seed(tc.seed + 7919 * round_idx, self.site))
        n = len(train)
        totals: dict[str, float] = {}
        steps = mim_steps = 0
        start = time.perf_counter()
        self.model.train()
        for _epoch in range(tc.local_epochs):
            order = torch.randperm(n, generator=gen)
            for begin in range(0, n, tc.batch_size):
                if should_abort():
                    raise InterruptedError(f"{self.site}: training aborted in round {round_idx}")
                idx = order[begin : begin + tc.batch_size]
                text = learner.text_features()
                batches = [
                    (
                        m,
                        fs.global_feats[idx].to(self.device).float(),
                        fs.tokens[idx].to(self.device),
                        fs.labels[idx].to(self.device),
                    )
                    for m, fs in views
                ]
                loss, parts = self._loss(text, batches, peer_feats, anchor)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{self.site}: loss became {loss.item()} in round {round_idx} "
                        f"({ {k: float(v.detach()) for k, v in parts.items()} }); lower train.lr"
                    )
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
                steps += 1
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach())
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
                mim_steps += "mim" in parts
        seconds = time.perf_counter() - start
        metrics = {f"train_{k}": v / max(steps, 1) for k, v in totals.items() if k != "mim"}
        metrics.update(train_seconds=seconds, steps=steps)
        if self.mim:
            metrics.update(mim_steps=mim_steps, **({"train_mim": totals["mim"] / mim_steps} if mim_steps else {}))
            if len(views) < 2:
                self.mim_note = f"{self.site} holds one modality ({views[0][0]}): no paired scenes for MIM"
            if self.mim_note:
                log.info(
                    "%s: MIM inactive in round %d (%d of %d steps active): %s",
                    self.site,
                    round_idx + 1,
                    mim_steps,
                    steps,
                    self.mim_note,
                )
        payload = self.payload() if self.algorithm.federated else {}
        return RoundResult(payload=payload, num_samples=n, metrics=metrics)

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def _scores(self, features: FeatureSet, modality: str | None, text: torch.Tensor) -> torch.Tensor:
        """Uncalibrated class logits [N, K] of one modality's features, in evaluation batches."""
        out = []
        for begin in range(0, len(features), self.cfg.train.eval_batch_size):
            sl = slice(begin, begin + self.cfg.train.eval_batch_size)
            pooled, tokens = self.model.adapt(
                modality, features.global_feats[sl].to(self.device).float(), features.tokens[sl].to(self.device)
            )
            out.append(self.model.scores(pooled, tokens, text).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, features: Features, shared_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [N, K] and predictions: single-label, logits and class indices [N]; multi-label, calibrated scores
        and multi-hot predictions [N, K] (sigmoid >= 0.5). A site holding several modalities of a scene scores it
        with the mean of their scores (late fusion). `shared_only` scores with the shared prompt alone."""
        self.model.eval()
        learner = self.model.learner
        text = learner.text_features([learner.shared_ctx] if shared_only else None)
        scores = [self._scores(fs, m, text) for m, fs in _views(features)]
        if self.model.calibration is not None:
            scores = [self.model.calibration(z.to(self.device)).cpu() for z in scores]
        logits = torch.stack(scores).mean(0)
        if self.model.calibration is not None:
            return logits, logits >= 0
        return logits, logits.argmax(-1)

    def evaluate(self, features: Features, shared_only: bool = False) -> dict:
        """Single-label: accuracy (%), cross-entropy, samples. Multi-label: micro F1, macro F1, mAP (%; accuracy
        None), the multi-label loss per image, samples (fedrsclip.multilabel.multilabel_metrics)."""
        logits, pred = self.predict(features, shared_only)
        if self.model.calibration is None:
            return {
                "accuracy": float((pred == features.labels).float().mean()) * 100.0,
                "loss": float(F.cross_entropy(logits, features.labels)),
                "samples": len(features),
            }
        metrics = multilabel_metrics(logits, features.labels)
        return {
            "accuracy": None,
            "loss": float(self._label_loss_of_scores(logits, features.labels)),
            "samples": len(features),
            **{k: metrics[k] for k in ("micro_f1", "macro_f1", "mAP")},
        }

    def _label_loss_of_scores(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ml = self.cfg.multilabel
        return (
            multilabel_loss(z, labels)
            if ml.loss == "bce"
            else multilabel_loss(z, labels, ml.gamma_pos, ml.gamma_neg, ml.clip)
        )

    @torch.no_grad()
    def evaluate_modalities(self, features: ModalSet) -> dict[str, dict]:
        """{modality: the model on that modality alone} (the missing-modality rows: a site holding s2 and s1 is
        scored on its s2 patches only, then on its s1 patches only). Multi-label: F1 and mAP by fedrsclip.multimodal.
        evaluate_modality with this site's calibration; single-label: accuracy and loss."""
        self.model.eval()
        learner = self.model.learner
        text = learner.text_features()
        out = {}
        for modality, fs in _views(features):
            if self.model.calibration is None:
                logits = self._scores(fs, modality, text)
                out[modality] = {
                    "accuracy": float((logits.argmax(-1) == fs.labels).float().mean()) * 100.0,
                    "loss": float(F.cross_entropy(logits, fs.labels)),
                    "samples": len(fs),
                }
                continue
            row = evaluate_modality(
                fs,
                modality,
                lambda pooled, tokens: self.model.scores(pooled, tokens, text),
                self.model.adapter,
                self.model.calibration,
                batch_size=self.cfg.train.eval_batch_size,
                device=self.device,
            )
            out[modality] = {
                "accuracy": None,
                "samples": row["samples"],
                **{k: row[k] for k in ("micro_f1", "macro_f1", "mAP")},
            }
        return out


def rms_change(value: np.ndarray, reference: np.ndarray) -> float:
    """Root-mean-square change per value from `reference` to `value` (same shape), in float64; inf on overflow, NaN
    where a value is NaN: what `set_global` bounds by train.max_global_change."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sqrt(np.mean((np.asarray(value, np.float64) - np.asarray(reference, np.float64)) ** 2)))


def _views(features: Features) -> list[tuple[str | None, FeatureSet]]:
    """(modality, features) of each modality a split holds; (None, features) for a plain FeatureSet."""
    if isinstance(features, ModalSet):
        return list(features.sets.items())
    return [(None, features)]

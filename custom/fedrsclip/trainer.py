"""The method in one file (as CoOp's trainer): the class scores, the loss, and one site's local training and
evaluation for one round. Plain PyTorch, no FLARE. The pieces it assembles: `prompts.py` (the prompt learner and
text encoder), `ot.py` (CMFAC's transport), `losses.py` (DPAC, the proximal term).

Per step only the text encoder runs (K classes x 1 or 2 prompts); image features come from the cache. The loss is
cross-entropy on the class scores (cosine, or CMFAC's 1 - d_OT), plus DPAC for dual prompts, plus the proximal
term for FedProx. The optimiser (SGD) is created afresh each round so no momentum leaks between rounds or sites.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .algorithms import SHARED, Algorithm, get_algorithm
from .backbone import Backbone
from .config import Config
from .features import FeatureSet
from .losses import dpac_loss, dpac_loss_classes, peer_negatives, proximal_term
from .ot import ot_scores
from .prompts import PromptLearner
from .protocol import Payload, PayloadError, RoundResult, as_float32, site_seed
from .sgd import SGD

log = logging.getLogger(__name__)


class PromptModel(torch.nn.Module):
    """Prompt learner + the algorithm's class scoring over cached image features."""

    def __init__(self, backbone: Backbone, classnames: list[str], cfg: Config, algorithm: Algorithm, seed: int,
                 private_seed: int):
        super().__init__()
        self.learner = PromptLearner(backbone, classnames, cfg.prompt, dual=algorithm.dual, seed=seed,
                                     private_seed=private_seed).to(backbone.device)
        self.algorithm = algorithm
        self.ot = cfg.ot
        self.logit_scale = backbone.logit_scale
        self.device = backbone.device

    def scores(self, global_feats: torch.Tensor, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K] from image features and text features [P, K, E]."""
        if self.algorithm.scoring == "cosine":
            image = F.normalize(global_feats.float(), dim=-1)
            sims = torch.einsum("be,pke->pbk", image, F.normalize(text.float(), dim=-1))
            return self.logit_scale * sims.mean(0)
        return self.logit_scale * ot_scores(tokens, text, self.ot, plan=self.algorithm.scoring)


class PromptTrainer:
    """One site's prompt model: receives the global shared prompt, trains locally, returns its shared prompt."""

    def __init__(self, cfg: Config, backbone: Backbone, classnames: list[str], site: str = "site-1"):
        self.cfg = cfg
        self.algorithm = get_algorithm(cfg.algorithm)
        self.site = site
        self.seed = site_seed(cfg.train.seed, site)
        self.model = PromptModel(backbone, classnames, cfg, self.algorithm, seed=cfg.train.seed,
                                 private_seed=self.seed)
        self.device = backbone.device
        self.round_start_shared: np.ndarray | None = None  # the shared prompt a round started from (DP reference)

    # ---- what crosses the wire -------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every payload entry (as ClassifierTrainer.shapes)."""
        return {SHARED: tuple(self.model.learner.shared_ctx.shape)}

    def payload(self) -> Payload:
        return {SHARED: self.model.learner.shared_ctx.detach().cpu().numpy().astype(np.float32)}

    def set_global(self, payload: Payload) -> None:
        """Load the aggregated shared prompt; refuses (loading nothing) anything that does not fit or is implausible:
        a wrong shape or dtype, values that are not finite as float32, or a change from the previous global shared
        prompt beyond `global_change_bound` (PayloadError naming the received payload)."""
        if SHARED not in payload:
            raise PayloadError(f"{self.site}: the global model has no {SHARED!r} (keys: {sorted(payload)})")
        param = self.model.learner.shared_ctx
        value = np.asarray(payload[SHARED])
        if value.shape != tuple(param.shape):
            raise PayloadError(f"{self.site}: received {SHARED} of shape {value.shape}, this model needs "
                               f"{tuple(param.shape)} (check model.arch and prompt.n_ctx match the job's)")
        if not np.issubdtype(value.dtype, np.floating):
            raise PayloadError(f"{self.site}: received {SHARED} of dtype {value.dtype}, expected floats")
        value, bad = as_float32(value)  # checked as it will be used: 1e39 is finite in float64, inf in float32
        if bad:
            raise PayloadError(f"{self.site}: the received global {SHARED} holds {bad} NaN or Inf values (of "
                               f"{value.size}; beyond float32's range counts as Inf); not loaded")
        reference = self.round_start_shared if self.round_start_shared is not None else \
            param.detach().cpu().numpy()
        change = float(np.sqrt(np.mean((value.astype(np.float64) - reference) ** 2)))
        bound = self.global_change_bound()
        if not change <= bound:
            raise PayloadError(
                f"{self.site}: the received global {SHARED} is implausible: it differs from the previous global "
                f"shared prompt by {change:.3g} (root mean square per value; largest value {np.abs(value).max():.3g}), "
                f"more than the {bound:.3g} this site accepts (train.max_global_change"
                f"{', plus the DP noise allowance' if self.cfg.privacy.dp_clip_norm is not None else ''}); not "
                "loaded. Under CKKS this is what an aggregate containing an update encrypted under another key "
                "decrypts to: check that every site has the same client context; raise train.max_global_change "
                "only if such a change is expected")
        with torch.no_grad():
            param.copy_(torch.from_numpy(value))

    def global_change_bound(self) -> float:
        """The largest root-mean-square change per value from one global shared prompt to the next that this site
        accepts: train.max_global_change, plus with DP the most the clipped, noised updates can move the mean (a
        site's update: at most C in L2 norm plus Gaussian noise of std sigma*C on each of its n values, whose root
        mean square exceeds sigma*C*(1 + 5/sqrt(2n)) with probability below 1e-6; the mean over sites has less)."""
        bound = self.cfg.train.max_global_change
        pc = self.cfg.privacy
        if pc.dp_clip_norm is not None:
            values = int(np.prod(self.model.learner.shared_ctx.shape))
            noise = pc.dp_noise_multiplier * pc.dp_clip_norm * (1 + 5 / np.sqrt(2 * values))
            bound += pc.dp_clip_norm / np.sqrt(values) + noise
        return float(bound)

    # ---- site-local state (never sent) --------------------------------------------------------------------
    def local_state(self) -> dict[str, torch.Tensor]:
        learner = self.model.learner
        state = {"shared_ctx": learner.shared_ctx.detach().cpu().clone()}
        if learner.private_ctx is not None:
            state["private_ctx"] = learner.private_ctx.detach().cpu().clone()
        return state

    def load_local_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what `local_state` saved: exactly this model's prompts, of its shapes, finite as float32; PayloadError
        says what does not fit (nothing is loaded then)."""
        learner = self.model.learner
        params = {name: getattr(learner, name) for name in ("shared_ctx", "private_ctx")
                  if getattr(learner, name) is not None}
        if set(state) != set(params):
            raise PayloadError(f"holds the prompts {sorted(state)}, this model has {sorted(params)} (algorithm "
                               f"{self.algorithm.name}); it was saved by another algorithm")
        values = {}
        for name, param in params.items():
            value = state[name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise PayloadError(f"holds {name} as {type(value).__name__}, not a float tensor")
            if tuple(value.shape) != tuple(param.shape):
                raise PayloadError(f"holds {name} of shape {tuple(value.shape)}, the model needs {tuple(param.shape)}; "
                                   "the configuration changed since it was saved")
            values[name] = value.to(param.dtype)  # checked as it is used
            if not torch.isfinite(values[name]).all():
                raise PayloadError(f"holds {name} with NaN or Inf values (beyond float32's range counts as Inf)")
        with torch.no_grad():
            for name, value in values.items():
                params[name].copy_(value)

    # ---- training -----------------------------------------------------------------------------------------------
    def _loss(self, text: torch.Tensor, global_feats, tokens, labels, peers, anchor) -> tuple[torch.Tensor, dict]:
        logits = self.model.scores(global_feats, tokens, text)
        ce = F.cross_entropy(logits, labels)
        parts = {"ce": ce}
        if self.algorithm.dpac and self.algorithm.dual and self.cfg.dpac.weight > 0:
            shared, private = text[0], text[1]
            if self.cfg.dpac.negatives == "peers":
                negatives = peer_negatives(peers) if peers is not None else shared.new_zeros(shared.shape[0], 0,
                                                                                             shared.shape[1])
                dpac = dpac_loss(private, shared, negatives, self.cfg.dpac.scale)
            else:
                dpac = dpac_loss_classes(private, shared, self.cfg.dpac.scale)
            parts["dpac"] = self.cfg.dpac.weight * dpac
        if self.algorithm.proximal:
            parts["prox"] = proximal_term([self.model.learner.shared_ctx], [anchor], self.cfg.train.fedprox_mu)
        return sum(parts.values()), parts

    def train_round(
        self,
        train: FeatureSet,
        round_idx: int = 0,
        peers: np.ndarray | None = None,
        should_abort: Callable[[], bool] = lambda: False,
    ) -> RoundResult:
        """Local epochs on the cached training features. `peers`: other sites' shared prompts [J, n_ctx, W]."""
        tc = self.cfg.train
        learner = self.model.learner
        params = [p for p in learner.contexts]
        optimizer = SGD(params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)  # torch.optim's, lighter
        anchor = learner.shared_ctx.detach().clone()
        self.round_start_shared = anchor.cpu().numpy().astype(np.float32)  # the received global (round 1: the init)
        peer_feats = None
        if peers is not None and len(peers):
            with torch.no_grad():
                peer_ctx = [torch.as_tensor(p, dtype=torch.float32, device=self.device) for p in peers]
                peer_feats = learner.text_features(peer_ctx)
        gen = torch.Generator().manual_seed(site_seed(tc.seed + 7919 * round_idx, self.site))
        n = len(train)
        totals: dict[str, float] = {}
        steps = 0
        start = time.perf_counter()
        self.model.train()
        for _epoch in range(tc.local_epochs):
            order = torch.randperm(n, generator=gen)
            for begin in range(0, n, tc.batch_size):
                if should_abort():
                    raise InterruptedError(f"{self.site}: training aborted in round {round_idx}")
                idx = order[begin : begin + tc.batch_size]
                labels = train.labels[idx].to(self.device)
                text = learner.text_features()
                loss, parts = self._loss(text, train.global_feats[idx].to(self.device).float(),
                                         train.tokens[idx].to(self.device), labels, peer_feats, anchor)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.site}: loss became {loss.item()} in round {round_idx} "
                                             f"({ {k: float(v.detach()) for k, v in parts.items()} }); lower train.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                for key, value in parts.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach())
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        seconds = time.perf_counter() - start
        metrics = {f"train_{k}": v / max(steps, 1) for k, v in totals.items()}
        metrics.update(train_seconds=seconds, steps=steps)
        payload = self.payload() if self.algorithm.federated else {}
        return RoundResult(payload=payload, num_samples=n, metrics=metrics)

    # ---- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, features: FeatureSet, shared_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, K] and predictions [N]; `shared_only` scores with the shared prompt alone."""
        self.model.eval()
        learner = self.model.learner
        text = learner.text_features([learner.shared_ctx] if shared_only else None)
        out = []
        for begin in range(0, len(features), self.cfg.train.eval_batch_size):
            sl = slice(begin, begin + self.cfg.train.eval_batch_size)
            out.append(self.model.scores(features.global_feats[sl].to(self.device).float(),
                                         features.tokens[sl].to(self.device), text).cpu())
        logits = torch.cat(out)
        return logits, logits.argmax(-1)

    def evaluate(self, features: FeatureSet, shared_only: bool = False) -> dict:
        logits, pred = self.predict(features, shared_only)
        return {"accuracy": float((pred == features.labels).float().mean()) * 100.0,
                "loss": float(F.cross_entropy(logits, features.labels)), "samples": len(features)}

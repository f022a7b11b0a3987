"""DPAC (the dual prompt alignment constraint, eq. 9) and the FedProx proximal term.

DPAC, per class k and site i:
    L = log(1 + sum_j exp(s * phi(p_k)^T psi(n_kj) - s * phi(p_k)^T psi(g_k)))
with p_k the private-prompt text feature, g_k the shared-prompt text feature and n_kj the negatives.
Choices the paper leaves open, made here:
  - phi = psi = L2 normalisation: a cosine in CLIP's own embedding space, and no extra learnable maps (which
    would be more parameters to keep private or to send);
  - s = `dpac.scale` (default 10);
  - the positive g_k is the site's live shared prompt (which starts each round as the global one), so the
    loss pulls both prompts, as the paper says it updates both;
  - negatives: "peers" (the paper's): other sites' shared-prompt features for class k, sent by the server;
    "classes": the shared-prompt features of the other classes, which needs no extra download and shows a
    site nothing about its peers (`dpac_loss_classes`: a cross-entropy over classes, in memory linear in K).
Eq. 10 as printed has the opposite sign; eq. 9 is the loss minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def dpac_loss(private: torch.Tensor, shared: torch.Tensor, negatives: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 9 with explicit negatives (the "peers" set): private, shared [K, E]; negatives [K, J, E] -> the mean
    over classes (a scalar). J = 0 gives 0."""
    if negatives.shape[1] == 0:
        return private.sum() * 0.0
    anchor = F.normalize(private, dim=-1)
    positive = (anchor * F.normalize(shared, dim=-1)).sum(-1)  # [K]
    negative = torch.einsum("ke,kje->kj", anchor, F.normalize(negatives, dim=-1))  # [K, J]
    # log(1 + sum_j exp(x_j)) = logsumexp([0, x_1..x_J]), computed stably
    margins = scale * (negative - positive[:, None])
    zeros = margins.new_zeros(margins.shape[0], 1)
    return torch.logsumexp(torch.cat([zeros, margins], dim=1), dim=1).mean()


_BLOCK_LOGITS = 1 << 22  # logits per block of classes (16 MB in fp32): bounds dpac_loss_classes' memory


def dpac_loss_classes(private: torch.Tensor, shared: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 9 with the other classes' shared features as negatives: private, shared [K, E] -> the mean over classes.

    The margin of class k's own term is s*(cos_kk - cos_kk) = 0, so 1 + sum_{j != k} exp(margin_kj) is the sum over
    every j, and eq. 9 is the cross-entropy of the logits s*cos(p_k, g_j) with target k: the same value as
    `dpac_loss` with the K x (K-1) negatives, without building them (25.6 GB at K = 10,000, E = 64). The logits are
    formed in blocks of rows, each recomputed in the backward pass, so the memory beyond the inputs stays near
    `_BLOCK_LOGITS` floats whatever K is.
    """
    num_classes = private.shape[0]
    anchor = F.normalize(private, dim=-1)
    keys = F.normalize(shared, dim=-1)
    targets = torch.arange(num_classes, device=private.device)
    rows = max(1, _BLOCK_LOGITS // max(num_classes, 1))
    if rows >= num_classes:
        return _cross_entropy_sum(anchor, keys, targets, scale) / num_classes
    total = sum(
        checkpoint(_cross_entropy_sum, anchor[i : i + rows], keys, targets[i : i + rows], scale, use_reentrant=False)
        for i in range(0, num_classes, rows)
    )
    return total / num_classes


def _cross_entropy_sum(anchor: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    return F.cross_entropy(scale * (anchor @ keys.t()), targets, reduction="sum")


def peer_negatives(peer_features: torch.Tensor) -> torch.Tensor:
    """Other sites' shared-prompt features [J, K, E] -> [K, J, E]."""
    return peer_features.permute(1, 0, 2)


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * sum ||w - w_global||^2 on the live parameters (so it has a gradient)."""
    total = sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors))
    return 0.5 * mu * total

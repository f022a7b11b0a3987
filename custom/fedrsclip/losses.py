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
    site nothing about its peers.
Eq. 10 as printed has the opposite sign; eq. 9 is the loss minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpac_loss(private: torch.Tensor, shared: torch.Tensor, negatives: torch.Tensor, scale: float) -> torch.Tensor:
    """private, shared [K, E]; negatives [K, J, E] -> mean over classes of eq. 9. J = 0 gives 0."""
    if negatives.shape[1] == 0:
        return private.sum() * 0.0
    anchor = F.normalize(private, dim=-1)
    positive = (anchor * F.normalize(shared, dim=-1)).sum(-1)  # [K]
    negative = torch.einsum("ke,kje->kj", anchor, F.normalize(negatives, dim=-1))  # [K, J]
    # log(1 + sum_j exp(x_j)) = logsumexp([0, x_1..x_J]), computed stably
    margins = scale * (negative - positive[:, None])
    zeros = margins.new_zeros(margins.shape[0], 1)
    return torch.logsumexp(torch.cat([zeros, margins], dim=1), dim=1).mean()


def class_negatives(shared: torch.Tensor) -> torch.Tensor:
    """[K, E] -> [K, K-1, E]: for class k, the shared features of every other class."""
    num_classes = shared.shape[0]
    others = ~torch.eye(num_classes, dtype=torch.bool, device=shared.device)
    return shared.unsqueeze(0).expand(num_classes, -1, -1)[others].view(num_classes, num_classes - 1, -1)


def peer_negatives(peer_features: torch.Tensor) -> torch.Tensor:
    """Other sites' shared-prompt features [J, K, E] -> [K, J, E]."""
    return peer_features.permute(1, 0, 2)


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * sum ||w - w_global||^2 on the live parameters (so it has a gradient)."""
    total = sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors))
    return 0.5 * mu * total

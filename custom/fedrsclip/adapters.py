"""Per-modality adapters on cached image features, and MF: each adapter averaged only among its modality's sites.

Seed 002's multi-modal fusion (MF) lets sites of different modalities learn one model by iterative model
averaging, with no site holding every modality. Here the frozen CLIP image encoder is shared by all modalities
(each modality reaches it through its own band composite), and a small adapter per modality maps the cached
features of that modality before scoring. The adapter of modality m is trained by the sites holding m and averaged
among them only; the shared prompt is averaged across all sites; the private prompt never leaves. Design choices
where the seed is silent (docs/multimodal.md):

- the adapter is a residual bottleneck, y = x + U relu(D x), D [r, E], U [E, r], r = `rank` (16): E = 512 for
  ViT-B/16 gives 2 x 16 x 512 = 16,384 values per modality, the order of the shared prompt (4 x 512) rather than
  a full E x E matrix (262,144);
- U starts at zero, so every adapter starts as the identity (the zero-shot CLIP features, exactly); D starts from
  a seed fixed per (seed, modality), so all sites of a modality start from the same weights and their average is
  meaningful (as the shared prompt's common init);
- one adapter serves both the pooled feature [.., E] and the patch tokens [.., V, E] (they share the projected
  embedding space), so cosine scoring and CMFAC's optimal transport see the same map;
- no bias terms: shifting the mean is FW's job (fedrsclip.whitening), done with the site's own statistics.

What a site of modality m sends: `adapter.<m>.down.weight` [r, E] and `adapter.<m>.up.weight` [E, r] (float32),
next to the shared prompt; a site holding several modalities sends each of its groups; nothing of a modality it
does not hold. `group_average` is the MF rule: each key is averaged over the sites that sent it (weights: their
sample counts, eq. 6), and a key whose group is incomplete at a sender is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .data.composite import MODALITIES
from .protocol import ADAPTER_PARAMETERS, ADAPTER_PREFIX, COMMON, adapter_key, adapter_keys, as_float32
from .protocol import key_group as protocol_key_group

PREFIX = ADAPTER_PREFIX
DEFAULT_RANK = 16
PARAMETERS = ADAPTER_PARAMETERS  # one adapter's tensors, in payload order


def key_group(key: str) -> str:
    """The averaging group of a payload key (`fedrsclip.protocol.key_group`): its modality for `adapter.<m>.*`,
    else COMMON. ValueError for an `adapter.` key that names no known modality or parameter."""
    group = protocol_key_group(key)
    if group != COMMON and group not in MODALITIES:
        raise ValueError(
            f"payload key {key!r} is not an adapter key adapter.<modality>.<parameter> with a modality "
            f"in {', '.join(MODALITIES)} and a parameter in {', '.join(PARAMETERS)}"
        )
    return group


def _modality_seed(seed: int, modality: str) -> int:
    """A seed per (seed, modality), stable across processes (hash() is salted per process)."""
    return int(hashlib.sha256(f"adapter:{seed}:{modality}".encode()).hexdigest()[:8], 16)


class ModalityAdapter(nn.Module):
    """y = x + up(relu(down(x))) on [..., E]; the identity at initialisation (up = 0)."""

    def __init__(self, dim: int, rank: int, seed: int):
        super().__init__()
        if not 1 <= rank <= dim:
            raise ValueError(f"adapter rank must be between 1 and the feature width {dim}; got {rank}")
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            # Unit-variance inputs give unit-variance bottleneck activations (fan-in scaling).
            self.down.weight.copy_(torch.randn(rank, dim, generator=gen) / dim**0.5)
            self.up.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., E] (any float dtype) -> [..., E] float32."""
        x = x.float()
        return x + self.up(torch.relu(self.down(x)))


class ModalityAdapters(nn.ModuleDict):
    """One ModalityAdapter per modality of the federation, keyed by modality name.

    Attach it to a model as the attribute `adapter`, so its state_dict names are the payload keys
    (`adapter.s2.down.weight`). A site builds the adapters of every modality in the federation (it may evaluate a
    modality it does not hold, with that modality's global adapter) and sends only those it trains.
    """

    def __init__(self, modalities: Sequence[str], dim: int, rank: int = DEFAULT_RANK, seed: int = 0):
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"adapters need modalities from {', '.join(MODALITIES)}; got {list(modalities)}")
        super().__init__({m: ModalityAdapter(dim, rank, _modality_seed(seed, m)) for m in dict.fromkeys(modalities)})

    def adapt(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """The adapter of `modality` applied to x [..., E]; KeyError naming the modalities it has."""
        if modality not in self:
            raise KeyError(f"no adapter for modality {modality!r}; this model has adapters for {', '.join(self)}")
        return self[modality](x)

    def payload(self, modalities: Iterable[str]) -> dict[str, np.ndarray]:
        """The adapter groups of `modalities` as {payload key: float32 array}: what a site holding them sends."""
        out = {}
        for m in modalities:
            if m not in self:
                raise KeyError(f"no adapter for modality {m!r}; this model has adapters for {', '.join(self)}")
            for name, tensor in self[m].state_dict().items():
                out[adapter_key(m, name)] = tensor.detach().cpu().numpy().astype(np.float32)
        return out

    def load_payload(self, payload: Mapping[str, np.ndarray]) -> list[str]:
        """Load every adapter group in `payload` (other keys are ignored); returns the modalities loaded.

        ValueError (naming the key) for an incomplete group, a modality this model has no adapter for, a wrong
        shape, a non-float dtype or non-finite values; nothing is loaded then.
        """
        groups: dict[str, dict[str, np.ndarray]] = {}
        for key, value in payload.items():
            group = key_group(key)
            if group != COMMON:
                groups.setdefault(group, {})[key.split(".", 2)[2]] = np.asarray(value)
        staged: dict[str, dict[str, torch.Tensor]] = {}
        for m, tensors in groups.items():
            if m not in self:
                raise ValueError(
                    f"received an adapter for modality {m!r}; this model has adapters for "
                    f"{', '.join(self)} (check the federation's modalities)"
                )
            missing = [p for p in PARAMETERS if p not in tensors]
            if missing:
                raise ValueError(f"received adapter group {m} without {', '.join(adapter_key(m, p) for p in missing)}")
            current = self[m].state_dict()
            for name, value in tensors.items():
                key = adapter_key(m, name)
                if value.shape != tuple(current[name].shape):
                    raise ValueError(
                        f"received {key} of shape {value.shape}; this model needs "
                        f"{tuple(current[name].shape)} (check model.arch and the adapter rank)"
                    )
                if not np.issubdtype(value.dtype, np.floating):
                    raise ValueError(f"received {key} with dtype {value.dtype}, expected floats; not loaded")
                if as_float32(value)[1]:  # checked as it will be used: 1e39 is finite in float64, inf in float32
                    raise ValueError(
                        f"received {key} with NaN or Inf values (beyond float32's range counts as Inf); not loaded"
                    )
            staged[m] = {name: torch.from_numpy(as_float32(v)[0]) for name, v in tensors.items()}
        for m, state in staged.items():
            self[m].load_state_dict(state)
        return sorted(staged)


def single_site_groups(site_modalities: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """{modality: its only site} for every modality held by exactly one site: with MF on, that adapter is
    "averaged" with itself, so it learns from one site only (part of the issue's bad input: say so in the log and
    the results)."""
    holders: dict[str, list[str]] = {}
    for site, mods in site_modalities.items():
        for m in dict.fromkeys(mods):
            holders.setdefault(m, []).append(site)
    return {m: sites[0] for m, sites in holders.items() if len(sites) == 1}


def group_average(updates: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """MF: each payload key averaged over the sites that sent it, weighted by their sample counts (eq. 6).

    updates: [(payload, num_samples)]. The shared prompt (sent by every site) is averaged across all; the adapter
    of modality m only across the sites that sent group m, so it never mixes with another modality's. ValueError
    when a sender's adapter group is incomplete, shapes disagree, or a weight is not positive.
    """
    if not updates:
        raise ValueError("no site updates to average")
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for index, (payload, num_samples) in enumerate(updates):
        if not num_samples > 0:
            raise ValueError(f"update {index} has weight {num_samples}; sample counts must be positive")
        groups = {key_group(k) for k in payload} - {COMMON}
        for m in groups:
            missing = [k for k in adapter_keys([m]) if k not in payload]
            if missing:
                raise ValueError(f"update {index} sends part of adapter group {m}: {', '.join(missing)} missing")
        for key, value in payload.items():
            value = np.asarray(value, dtype=np.float64)
            if key in sums and sums[key].shape != value.shape:
                raise ValueError(f"update {index} sends {key} of shape {value.shape}, others {sums[key].shape}")
            sums[key] = sums.get(key, 0.0) + value * float(num_samples)
            weights[key] = weights.get(key, 0.0) + float(num_samples)
    return {key: (total / weights[key]).astype(np.float32) for key, total in sums.items()}

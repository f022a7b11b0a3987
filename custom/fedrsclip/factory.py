"""One place that turns a configuration into a site (as open_clip's factory turns names into models): the
algorithm's `kind` names the site class, which builds its trainer. No other module tests `kind`.

To add a kind of model (a new backbone family, a multi-modal site): a `fedrsclip.site.Site` subclass with its
trainer (a `fedrsclip.protocol.Trainer`), and one entry in `SITES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .algorithms import get_algorithm
from .baselines.site import ClassifierSite
from .config import Config
from .site import PromptSite, Site

SITES: dict[str, type[Site]] = {PromptSite.KIND: PromptSite, ClassifierSite.KIND: ClassifierSite}


def site_class(cfg: Config) -> type[Site]:
    """The site class that runs `cfg.algorithm`."""
    return SITES[get_algorithm(cfg.algorithm).kind]


def load_shared(cfg: Config) -> Any:
    """What every site of one process can share (the frozen CLIP for prompt sites), or None."""
    return site_class(cfg).load_shared(cfg)


def make_site(
    cfg: Config,
    name: str,
    manifest: Mapping[str, Any] | None = None,
    backbone: Any = None,
    state_dir: str | Path | None = None,
    progress: bool = True,
) -> Site:
    """The site `name` of `manifest` (None: cfg.data.manifest) for `cfg.algorithm`; `backbone`: from `load_shared`
    (None: the site loads its own). Raises DataError for missing data, PayloadError for a saved state that does not
    fit."""
    return site_class(cfg)(cfg, name, manifest, backbone=backbone, state_dir=state_dir, progress=progress)

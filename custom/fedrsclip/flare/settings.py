"""A FLARE site's configuration: the job's settings, then the site's own (never part of the submitted job).

Layers, later ones win:
  1. the package defaults;
  2. the job's YAML (app/config/fedrsclip.yaml) and the executor's `overrides` (job settings, the same for all);
  3. the site configuration: the file named by $FEDRSCLIP_SITE_CONFIG ("{site}" in it becomes the site name), else
     `<site workspace>/local/fedrsclip_site.yaml` when it exists. It says where this institution's data and
     weights are and what its hardware runs, so it may only set `data.*` and `model.pretrained / random_init /
     cache_dir / device / text_precision`; whatever decides the shared model (algorithm, model.arch, prompt,
     train.*) comes from the job so every site trains the same one. Relative paths in it are relative to the file's
     folder. (`model.text_precision`, the text encoder's autocast on a CUDA site, is the site's as `model.device`
     is: which of fp32, bf16 or fp16 a GPU runs well is a property of that GPU; it changes neither the model's shape
     nor what is sent, only rounding, as a CPU site and a GPU site differ anyway; on a CPU it has no effect.)

Relative `data.cache_dir` and the synthetic dataset's folder live under the site's workspace; a relative
`prompt.class_descriptions` is a file of the job's config folder (where `fedrsclip job` puts its copy).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config, ConfigError, load_config, parse_overrides, read_yaml_mapping
from ..data.errors import DataError
from ..data.manifest import load_manifest
from ..data.source import synthetic_manifest
from ..results_file import describe_data

SITE_CONFIG_ENV = "FEDRSCLIP_SITE_CONFIG"
SITE_CONFIG_FILE = "fedrsclip_site.yaml"
SITE_MODEL_KEYS = ("pretrained", "random_init", "cache_dir", "device", "text_precision")
_SITE_PATH_KEYS = {"data": ("manifest", "root", "cache_dir", "synthetic_dir"), "model": ("cache_dir",)}
SYNTHETIC_SUBDIR = "fedrsclip-data"


class SiteConfigError(ConfigError):
    """The site's own configuration file is wrong (not the job's)."""


@dataclass
class SiteSettings:
    cfg: Config
    manifest: dict | None  # the loaded manifest for data.source: synthetic, else None (Site loads data.manifest)
    site_config: Path | None  # the site configuration file applied, if any
    data_description: str  # the same on every site (goes into the results)
    manifest_path: Path | None  # this site's manifest file


def _nested(overrides: Mapping[str, Any] | Sequence[str] | None) -> dict:
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'section.key=value' strings, got the string {overrides!r}")
    return parse_overrides(list(overrides))


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find_site_config(site: str, local_dir: str | Path | None) -> Path | None:
    """The site configuration file that applies, or None. A set but missing $FEDRSCLIP_SITE_CONFIG is an error."""
    env = os.environ.get(SITE_CONFIG_ENV)
    if env:
        path = Path(env.replace("{site}", site)).expanduser()
        if not path.is_file():
            raise SiteConfigError(
                f"{site}: ${SITE_CONFIG_ENV} names {path}, which does not exist; fix the variable or unset it"
            )
        return path
    if local_dir is not None:
        path = Path(local_dir) / SITE_CONFIG_FILE
        if path.is_file():
            return path
    return None


def read_site_config(path: Path) -> dict:
    """The site file as a nested mapping, restricted to site settings, relative paths made absolute."""
    loaded = read_yaml_mapping(path, SiteConfigError, "the site configuration")
    allowed = ["data.*"] + [f"model.{k}" for k in SITE_MODEL_KEYS]
    for section, values in loaded.items():
        if section not in ("data", "model") or not isinstance(values, Mapping):
            raise SiteConfigError(
                f"the site configuration {path} sets {section!r}; a site may only set {', '.join(allowed)} "
                "(algorithm, model.arch, prompt and train settings come from the job so every site trains the "
                "same model)"
            )
        if section == "model":
            extra = sorted(set(values) - set(SITE_MODEL_KEYS))
            if extra:
                raise SiteConfigError(
                    f"the site configuration {path} sets model.{extra[0]}; a site may only set "
                    f"{', '.join(allowed)} (model.arch comes from the job)"
                )
    out = {section: dict(values) for section, values in loaded.items()}
    for section, keys in _SITE_PATH_KEYS.items():
        for key in keys:
            value = out.get(section, {}).get(key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                out[section][key] = str((path.parent / value).resolve())
    pretrained = out.get("model", {}).get("pretrained")
    if (
        isinstance(pretrained, str)
        and ("/" in pretrained or os.sep in pretrained)
        and not Path(pretrained).expanduser().is_absolute()
    ):
        out["model"]["pretrained"] = str((path.parent / pretrained).resolve())
    return out


def resolve_site_settings(
    site: str,
    job_config: str | Path | None,
    overrides: Mapping[str, Any] | Sequence[str] | None,
    workspace_root: str | Path,
    local_dir: str | Path | None = None,
) -> SiteSettings:
    """The configuration this site trains with, and its data (generated first for data.source: synthetic).

    Raises ConfigError for the job's settings, SiteConfigError for the site file, DataError for missing data.
    """
    job_overrides = _nested(overrides)
    cfg = load_config(job_config, job_overrides)  # the job alone: its errors are the job's
    if cfg.dpac.negatives == "peers":
        raise ConfigError(
            "dpac.negatives: peers needs every other site's shared prompt each round, which this FLARE "
            "job does not send; use dpac.negatives: classes"
        )
    site_path = find_site_config(site, local_dir)
    if site_path is not None:
        site_values = read_site_config(site_path)
        try:
            cfg = load_config(job_config, _deep_merge(job_overrides, site_values))
        except ConfigError as exc:
            raise SiteConfigError(f"{exc} (after applying the site configuration {site_path})") from exc

    descriptions = cfg.prompt.class_descriptions
    if descriptions and job_config is not None and not Path(descriptions).expanduser().is_absolute():
        # the job's copy (fedrsclip job ships the file): relative to the job's config folder, on every site alike
        cfg = dataclasses.replace(
            cfg, prompt=dataclasses.replace(cfg.prompt, class_descriptions=str(Path(job_config).parent / descriptions))
        )
    workspace_root = Path(workspace_root)
    data = cfg.data
    if not Path(data.cache_dir).expanduser().is_absolute():
        data = dataclasses.replace(data, cache_dir=str(workspace_root / data.cache_dir))
    cfg = dataclasses.replace(cfg, data=data)
    where = (
        f"{site_path}"
        if site_path
        else f"{Path(local_dir or workspace_root / 'local') / SITE_CONFIG_FILE} or ${SITE_CONFIG_ENV}"
    )
    if data.source in ("synthetic", "synthetic-mm"):
        path = synthetic_manifest(data, workspace_root / SYNTHETIC_SUBDIR, modalities=cfg.multimodal.modalities)
        manifest = load_manifest(path)
        if site not in manifest["sites"]:
            raise DataError(
                f"{site}: the synthetic dataset is partitioned over data.synthetic_sites = "
                f"{data.synthetic_sites} sites ({', '.join(manifest['sites'])}), which does not include "
                f"{site}; set data.synthetic_sites to the number of sites in the job's fedrsclip.yaml "
                "or overrides"
            )
        return SiteSettings(cfg, manifest, site_path, describe_data(data, path, cfg.multimodal.modalities), path)
    if not data.manifest:
        raise DataError(
            f"{site}: no data configured for this site: set data.manifest (the partition manifest that "
            f"names {site}) and, if the images are elsewhere, data.root, in {where}; or data.source: "
            "synthetic for the offline demo"
        )
    if not Path(data.manifest).expanduser().is_file():
        raise DataError(
            f"{site}: data.manifest is {data.manifest}, which does not exist here; fix data.manifest "
            f"in {where} (create one with `fedrsclip data partition`)"
        )
    return SiteSettings(cfg, None, site_path, describe_data(data, data.manifest), Path(data.manifest))

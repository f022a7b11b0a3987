"""Where a FLARE site's settings and data come from: job YAML + overrides, then the site's own file; the synthetic
data source; the job copy helper. No FLARE run, no CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrsclip.config import ConfigError, load_config
from fedrsclip.data import DataError, load_manifest
from fedrsclip.data.source import synthetic_folder, synthetic_manifest
from fedrsclip.flare.job import PACKAGE_FILES, JobSpec, job_settings, write_job
from fedrsclip.flare.settings import (
    SITE_CONFIG_ENV,
    SITE_CONFIG_FILE,
    SiteConfigError,
    find_site_config,
    resolve_site_settings,
)

JOB_YAML = PACKAGE_FILES / "fedrsclip.yaml"  # the job's settings, as fedrsclip job writes them
SMALL = ["data.synthetic_per_class=4", "data.synthetic_classes=3", "data.synthetic_sites=2"]


@pytest.fixture(autouse=True)
def _no_site_env(monkeypatch):
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)


def _site(tmp_path: Path, text: str) -> Path:
    local = tmp_path / "local"
    local.mkdir(exist_ok=True)
    (local / SITE_CONFIG_FILE).write_text(text)
    return local


def test_job_yaml_is_the_offline_demo():
    cfg = load_config(JOB_YAML)
    assert cfg.model.arch == "fedrsclip-tiny" and cfg.model.pretrained is None and cfg.model.random_init
    assert cfg.data.source == "synthetic" and cfg.data.synthetic_sites == 10


def test_data_source_settings_are_checked():
    assert load_config().data.source == "manifest"  # default unchanged
    with pytest.raises(ConfigError, match="data.source must be one of manifest, synthetic, synthetic-mm"):
        load_config(None, ["data.source=bogus"])
    with pytest.raises(ConfigError, match="set data.source: manifest"):
        load_config(None, ["data.source=synthetic", "data.manifest=m.json"])
    with pytest.raises(ConfigError, match="data.synthetic_sites must be >= 1; got 0"):
        load_config(None, ["data.synthetic_sites=0"])


def test_synthetic_manifest_is_generated_once_and_identical_everywhere(tmp_path):
    cfg = load_config(JOB_YAML, SMALL)
    first = synthetic_manifest(cfg.data, tmp_path / "a")
    mtime = first.stat().st_mtime_ns
    assert synthetic_manifest(cfg.data, tmp_path / "a") == first and first.stat().st_mtime_ns == mtime  # reused
    second = synthetic_manifest(cfg.data, tmp_path / "b")  # another site, its own folder
    a, b = load_manifest(first), load_manifest(second)
    assert a["sites"] == b["sites"] and a["classes"] == b["classes"] and sorted(a["sites"]) == ["site-1", "site-2"]
    other = load_config(JOB_YAML, SMALL + ["data.synthetic_seed=1"])
    assert synthetic_folder(other.data, tmp_path / "a") != first.parent  # a new setting, a new folder


def test_synthetic_manifest_recovers_from_an_interrupted_generation(tmp_path):
    cfg = load_config(JOB_YAML, SMALL)
    folder = synthetic_folder(cfg.data, tmp_path)
    (folder / "images" / "forest").mkdir(parents=True)
    (folder / "images" / "forest" / "half.png").write_bytes(b"")
    path = synthetic_manifest(cfg.data, tmp_path)
    assert path.parent == folder and not (folder / "images" / "forest" / "half.png").exists()


def test_settings_layers_and_site_file(tmp_path):
    manifest = tmp_path / "data" / "m.json"
    manifest.parent.mkdir()
    manifest.write_text("{}")
    local = _site(
        tmp_path, "data:\n  source: manifest\n  manifest: ../data/m.json\n  root: imgs\nmodel:\n  device: cpu\n"
    )
    s = resolve_site_settings("site-1", JOB_YAML, ["train.lr=0.01"], tmp_path / "ws", local)
    assert s.site_config == local / SITE_CONFIG_FILE
    assert s.cfg.train.lr == 0.01 and s.cfg.model.arch == "fedrsclip-tiny"  # job settings kept
    assert Path(s.cfg.data.manifest) == manifest.resolve()  # relative to the site file
    assert Path(s.cfg.data.root) == (local / "imgs").resolve()
    assert s.cfg.model.device == "cpu"
    assert Path(s.cfg.data.cache_dir).is_relative_to(tmp_path / "ws")  # caches live in the site workspace
    assert s.manifest is None


def test_site_file_may_not_change_the_model_everyone_trains(tmp_path):
    local = _site(tmp_path, "algorithm: fedavg-pl\n")
    with pytest.raises(SiteConfigError, match="sets 'algorithm'; a site may only set data"):
        resolve_site_settings("site-1", JOB_YAML, [], tmp_path, local)
    local = _site(tmp_path, "model:\n  arch: ViT-B-16\n")
    with pytest.raises(SiteConfigError, match="model.arch"):
        resolve_site_settings("site-1", JOB_YAML, [], tmp_path, local)


def test_site_file_errors_name_the_file(tmp_path):
    local = _site(tmp_path, "data:\n  manifest: /x.json\n")  # job says synthetic: conflict
    with pytest.raises(SiteConfigError, match=f"set data.source: manifest.*{SITE_CONFIG_FILE}"):
        resolve_site_settings("site-1", JOB_YAML, [], tmp_path, local)


def test_site_config_from_environment(tmp_path, monkeypatch):
    (tmp_path / "site-2.yaml").write_text("data:\n  synthetic_dir: gen\n")
    monkeypatch.setenv(SITE_CONFIG_ENV, str(tmp_path / "{site}.yaml"))
    assert find_site_config("site-2", None) == tmp_path / "site-2.yaml"
    with pytest.raises(SiteConfigError, match=f"\\${SITE_CONFIG_ENV} names .*site-3.yaml, which does not exist"):
        find_site_config("site-3", None)
    s = resolve_site_settings("site-2", JOB_YAML, SMALL, tmp_path / "ws", None)
    assert s.manifest_path.is_relative_to(tmp_path / "gen")


def test_missing_data_names_the_setting_and_the_file(tmp_path):
    with pytest.raises(DataError, match=f"set data.manifest .* in .*{SITE_CONFIG_FILE} or \\${SITE_CONFIG_ENV}"):
        resolve_site_settings("site-1", None, ["model.arch=fedrsclip-tiny"], tmp_path, tmp_path / "local")
    local = _site(tmp_path, "data:\n  source: manifest\n  manifest: nowhere.json\n")
    with pytest.raises(DataError, match=f"data.manifest is .*nowhere.json, which does not exist.*{SITE_CONFIG_FILE}"):
        resolve_site_settings("site-1", JOB_YAML, [], tmp_path, local)


def test_synthetic_data_for_a_site_outside_the_partition(tmp_path):
    with pytest.raises(DataError, match="data.synthetic_sites = 2 .* does not include site-3"):
        resolve_site_settings("site-3", JOB_YAML, SMALL, tmp_path, None)


def test_job_errors_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        resolve_site_settings("site-1", JOB_YAML, ["algorithm=nope"], tmp_path, None)
    with pytest.raises(ConfigError, match="unknown setting 'train.epochs'"):
        resolve_site_settings("site-1", JOB_YAML, {"train": {"epochs": 3}}, tmp_path, None)
    with pytest.raises(ConfigError, match="dpac.negatives: peers"):
        resolve_site_settings("site-1", JOB_YAML, ["dpac.negatives=peers"], tmp_path, None)


def test_the_job_spec_sets_sites_rounds_and_overrides(tmp_path):
    job = write_job(JobSpec(sites=3, rounds=2, overrides=("train.lr=0.01",)), tmp_path / "job")
    assert job_settings(job) == {
        "min_clients": 3,
        "num_rounds": 2,
        "he": False,
        "overrides": ["data.synthetic_sites=3", "train.lr=0.01"],
    }
    assert json.loads((job / "meta.json").read_text())["min_clients"] == 3
    assert (job / "app" / "config" / "fedrsclip.yaml").read_text() == JOB_YAML.read_text()


def test_site_file_may_choose_its_text_precision(tmp_path):
    """model.text_precision is the site's hardware choice (the text encoder's autocast on its GPU), as model.device."""
    local = _site(tmp_path, "model:\n  device: cpu\n  text_precision: bf16\n")
    s = resolve_site_settings("site-1", JOB_YAML, [*SMALL], tmp_path / "ws", local)
    assert s.cfg.model.text_precision == "bf16" and s.cfg.model.device == "cpu"
    assert s.cfg.model.arch == "fedrsclip-tiny"  # the job's model is unchanged
    local = _site(tmp_path, "model:\n  text_precision: fp8\n")
    with pytest.raises(SiteConfigError, match="text_precision"):
        resolve_site_settings("site-1", JOB_YAML, [*SMALL], tmp_path / "ws", local)

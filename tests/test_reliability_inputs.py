"""Bad input that the other test files do not cover: a NaN loss and a diverging OT mid-round, a saved state from
another class list or a corrupt one, a site without training images, updates the server must refuse, unreadable
configuration files, and wrong fault-tolerance / resume options. Each must fail with a message that says what and
where, and leave what was saved before exactly as it was."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from fedrsclip.algorithms import SHARED
from fedrsclip.config import ConfigError
from fedrsclip.data.errors import DataError
from fedrsclip.flare.job import JobError, JobSpec, find_resume, job_settings, write_job
from fedrsclip.flare.model_file import save_npz
from fedrsclip.flare.settings import SiteConfigError, resolve_site_settings
from fedrsclip.ot import OTDivergedError
from fedrsclip.protocol import ContributionError, PayloadError, check_update, class_fingerprint
from fedrsclip.site import PromptSite
from helpers import tiny_config


@pytest.fixture()
def make_site(tiny_backbone, synth_manifest, feature_cache, tmp_path):
    def make(*overrides, manifest=None, name="site-1"):
        cfg = tiny_config("train.lr=0.05", *overrides, cache_dir=feature_cache)
        return PromptSite(
            cfg, name, manifest or synth_manifest, tiny_backbone, state_dir=tmp_path / "state", progress=False
        )

    return make


def saved_once(make_site, *overrides):
    site = make_site(*overrides)
    site.run_round(None, 0)
    return site, site.state_path.read_bytes()


NO_BOUND = "train.max_global_change=1e300"  # lets `huge` past the site's plausibility check, to test what follows


def huge(site) -> dict:
    """A finite shared prompt (accepted with NO_BOUND) whose text features overflow."""
    return {SHARED: np.full_like(site.trainer.payload()[SHARED], 3e38)}


def test_nan_loss_fails_the_round_and_keeps_the_state(make_site):
    _, before = saved_once(make_site, "algorithm=fedavg-pl")  # cosine scores: the loss itself goes non-finite
    site = make_site("algorithm=fedavg-pl", NO_BOUND)
    with pytest.raises(FloatingPointError, match="loss became .* in round 1 .*lower train.lr"):
        site.run_round(huge(site), 1)
    assert site.state_path.read_bytes() == before


def test_diverging_ot_fails_the_round_and_keeps_the_state(make_site):
    site, before = saved_once(make_site)
    site = make_site(NO_BOUND)
    with pytest.raises(OTDivergedError, match="ot.log_domain: true"):
        site.run_round(huge(site), 1)
    assert site.state_path.read_bytes() == before


def test_a_global_prompt_beyond_float32_range_is_refused_as_the_payload(make_site):
    """Issue 11 item 6: 1e39 is finite in float64 but inf once cast to the float32 the site trains in; it was
    loaded and failed later as an OT error. Now the payload is refused where it enters, and named."""
    site, before = saved_once(make_site)
    beyond = {SHARED: np.full(site.trainer.payload()[SHARED].shape, 1e39)}
    with pytest.raises(PayloadError, match=r"the received global shared_ctx holds 256 NaN or Inf .*beyond float32"):
        site.run_round(beyond, 1)
    assert site.state_path.read_bytes() == before


def test_values_beyond_float32_range_are_refused_at_the_server_and_before_sending(make_site):
    from fedrsclip.privacy import PrivacyError, check_outgoing

    beyond = {SHARED: np.full((4, 64), 1e39)}
    with pytest.raises(ContributionError, match="holds 256 NaN or Inf values .*beyond float32"):
        check_update(beyond, 10, {SHARED: (4, 64)})
    site = make_site()
    with pytest.raises(PrivacyError, match="refusing to send 'shared_ctx'.*beyond float32"):
        check_outgoing(beyond, site.algorithm, site.trainer.shapes, site.name)


def test_saved_state_of_another_class_list_is_refused(make_site, synth_manifest):
    site, before = saved_once(make_site)
    other = copy.deepcopy(synth_manifest)
    other["classes"] = list(reversed(other["classes"]))
    with pytest.raises(PayloadError, match=f"{site.state_path}.* was trained on 10 classes .*use the manifest"):
        make_site(manifest=other)
    assert site.state_path.read_bytes() == before
    assert class_fingerprint(other["classes"]) != class_fingerprint(synth_manifest["classes"])


def test_corrupt_saved_state_is_refused_not_replaced(make_site):
    site, before = saved_once(make_site)
    site.state_path.write_bytes(before[: len(before) // 2])
    with pytest.raises(PayloadError, match="cannot be read"):
        make_site()
    assert site.state_path.read_bytes() == before[: len(before) // 2]


def test_sites_with_different_class_descriptions_are_not_averaged_together(make_site, synth_manifest, tmp_path):
    """The class-list fingerprint covers the class texts the prompts use (prompt.class_descriptions), not only the
    names: the server's gate keeps the majority's and rejects the other."""
    from fedrsclip.protocol import Gate

    def descriptions(name: str, text) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({c: text(c) for c in synth_manifest["classes"]}))
        return f"prompt.class_descriptions={path}"

    plain = make_site().classes_fingerprint
    assert plain == class_fingerprint(synth_manifest["classes"])  # names only: as before
    assert make_site(descriptions("same.json", lambda c: c.replace("_", " "))).classes_fingerprint == plain
    aerial = make_site(descriptions("a.json", lambda c: f"an aerial view of {c}")).classes_fingerprint
    ground = make_site(descriptions("b.json", lambda c: f"a ground photo of {c}")).classes_fingerprint
    assert len({plain, aerial, ground}) == 3
    refused = Gate().refuse_minority(
        {"site-1": ("s", aerial, 10.0), "site-2": ("s", aerial, 10.0), "site-3": ("s", ground, 10.0)}
    )
    assert list(refused) == ["site-3"] and "another class list" in refused["site-3"]


def test_site_without_training_images(make_site, synth_manifest):
    empty = copy.deepcopy(synth_manifest)
    empty["sites"]["site-2"]["train"] = []
    with pytest.raises(DataError, match="site-2: the manifest gives this site no training images"):
        make_site(manifest=empty, name="site-2")


@pytest.mark.parametrize(
    "data, weight, words",
    [
        ({SHARED: np.full((4, 64), np.nan, np.float32)}, 10, "holds 256 NaN or Inf"),
        ({SHARED: np.full((4, 64), np.inf, np.float32)}, 10, "NaN or Inf"),
        ({SHARED: np.zeros((4, 64), np.int64)}, 10, "dtype int64"),
        ({SHARED: np.zeros((5, 64), np.float32)}, 10, r"shape \(5, 64\), the global model's is \(4, 64\)"),
        ({"other": np.zeros((4, 64), np.float32)}, 10, "not the global model's"),
        ({SHARED: [0.0] * 256}, 10, "list, not an array"),
        ({}, 10, r"entries \[\] are not the global model's"),  # empty is valid only when every site sends nothing
        ({SHARED: np.zeros((4, 64), np.float32)}, float("nan"), "weight"),
        ({SHARED: np.zeros((4, 64), np.float32)}, 0, "weight"),
    ],
)
def test_server_refuses_bad_updates(data, weight, words):
    with pytest.raises(ContributionError, match=words):
        check_update(data, weight, {SHARED: (4, 64)})
    assert check_update({SHARED: np.zeros((4, 64), np.float32)}, 10, {SHARED: (4, 64)}) == {SHARED: (4, 64)}


def test_missing_or_unreadable_configuration_files(tmp_path):
    with pytest.raises(ConfigError, match=f"configuration file {tmp_path / 'job.yaml'} does not exist"):
        resolve_site_settings("site-1", tmp_path / "job.yaml", [], tmp_path, tmp_path)
    (tmp_path / "fedrsclip_site.yaml").write_bytes(b"\xff\xfe\x00 not text")
    with pytest.raises(SiteConfigError, match=f"cannot read the site configuration {tmp_path / 'fedrsclip_site.yaml'}"):
        resolve_site_settings("site-1", None, [], tmp_path, tmp_path)


def test_fault_tolerance_options(tmp_path):
    job = write_job(JobSpec(sites=4, rounds=3, min_clients=3, train_timeout=60, wait_after_min=5), tmp_path / "job")
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    workflow = next(w for w in server["workflows"] if w["path"].endswith("ScatterAndGather"))["args"]
    assert (workflow["min_clients"], workflow["train_timeout"], workflow["wait_time_after_min_received"]) == (3, 60, 5)
    assert next(c for c in server["components"] if c["id"] == "aggregator")["args"]["min_clients"] == 3
    assert json.loads((job / "meta.json").read_text())["min_clients"] == 3
    evaluation = next(w for w in server["workflows"] if w["path"].endswith("GlobalModelEval"))
    assert evaluation["args"]["validation_timeout"] == 60
    for bad, words in [
        ({"min_clients": 5, "sites": 4}, "between 1 and the job's 4 sites"),
        ({"min_clients": 0}, "between"),
        ({"train_timeout": -1}, "train_timeout must be an integer >= 0"),
    ]:
        with pytest.raises(JobError, match=words):
            JobSpec(**bad)


def test_resume_options(tmp_path):
    run = tmp_path / "run" / "server" / "simulate_job" / "app_server"
    with pytest.raises(JobError, match="no FL_global_model.npz"):
        find_resume(tmp_path / "run")
    ones = {SHARED: np.ones((4, 64), np.float32)}
    save_npz(run / "FL_global_model.npz", ones, {"round": 3, "job_id": "simulate_job"})
    with pytest.raises(JobError, match="has done 3 rounds and the job has 3: nothing is left"):
        write_job(JobSpec(sites=2, rounds=3, resume=find_resume(tmp_path / "run")), tmp_path / "job")
    assert not (tmp_path / "job").exists()  # refused before anything was written
    (run / "FL_global_model.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(JobError, match="cannot read the global model"):
        find_resume(tmp_path / "run")
    save_npz(run / "FL_global_model.npz", ones, {"round": 1, "job_id": "simulate_job"})
    resume = find_resume(run)
    job = write_job(JobSpec(sites=2, rounds=3, resume=resume), tmp_path / "job")
    assert resume.rounds_done == 1 and job_settings(job)["num_rounds"] == 2
    assert resume.site_state == str(tmp_path / "run" / "{site}" / "simulate_job" / "fedrsclip")
    copied = job / "app" / "config" / "resume_FL_global_model.npz"
    assert copied.read_bytes() == (run / "FL_global_model.npz").read_bytes()
    save_npz(run / "FL_global_model.npz", ones, {"round": 1, "job_id": "1234-abcd"})
    assert find_resume(run / "FL_global_model.npz").site_state == "1234-abcd/fedrsclip"  # POC / deployment


def test_an_empty_update_is_valid_only_without_a_global_model():
    """`local` sends nothing: every site's update is empty and the global model stays empty."""
    assert check_update({}, 10, None) == {}
    with pytest.raises(ContributionError, match="not the global model's"):
        check_update({}, 10, {SHARED: (4, 64)})

"""A site's saved state (its private prompt, its last shared prompt, its DP release count) is checked when it is
loaded: a file of another structure, NaN prompts, a flipped byte (a checksum), or prompts of another algorithm are
refused with the file's name, and the file is left exactly as it was. A real tiny CLIP site, real torch files."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

from fedrsclip.algorithms import SHARED
from fedrsclip.protocol import PayloadError
from fedrsclip.site import STATE_FORMAT, PromptSite, state_checksum, state_file
from helpers import tiny_config


def build(tiny_backbone, synth_manifest, feature_cache, state_dir):
    cfg = tiny_config("train.lr=0.05", cache_dir=feature_cache)
    return PromptSite(cfg, "site-1", synth_manifest, tiny_backbone, state_dir=state_dir, progress=False)


@pytest.fixture(scope="module")
def one_round(tiny_backbone, synth_manifest, feature_cache, tmp_path_factory) -> bytes:
    """The state file of a site that completed one round."""
    site = build(tiny_backbone, synth_manifest, feature_cache, tmp_path_factory.mktemp("state"))
    site.run_round(None, 0)
    return site.state_path.read_bytes()


@pytest.fixture()
def make_site(tiny_backbone, synth_manifest, feature_cache, tmp_path):
    return lambda: build(tiny_backbone, synth_manifest, feature_cache, tmp_path / "state")


@pytest.fixture()
def saved(make_site, one_round, tmp_path):
    """A site whose state folder holds the state of one completed round, and that state's bytes."""
    path = state_file(tmp_path / "state", "site-1")
    path.parent.mkdir(parents=True)
    path.write_bytes(one_round)
    return make_site(), one_round


def refused(make_site, path, before: bytes, *words: str) -> None:
    """Building the site again must fail naming `path` and `words`, and leave the file's bytes as they were."""
    with pytest.raises(PayloadError) as info:
        make_site()
    message = str(info.value)
    assert str(path) in message and all(w in message for w in words), message
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "content, words",
    [
        ({"foo": 1}, ["has no 'prompts' entry"]),  # was KeyError: 'prompts'
        ([1, 2, 3], ["is not a fedrsclip site state", "list"]),
        ({"prompts": {"shared_ctx": "text"}}, ["has no 'prompts' entry of tensors"]),
        ({"prompts": {"shared_ctx": torch.zeros(4, 64)}, "round": "one"}, ["round 'one'"]),
    ],
)
def test_a_state_file_of_another_structure_is_refused_by_name(make_site, saved, content, words):
    site, _ = saved
    torch.save(content, site.state_path)
    refused(make_site, site.state_path, site.state_path.read_bytes(), *words)


def resave(path, change) -> None:
    """Rewrite a state file with `change(state)` applied and its checksum made to match (a consistent file)."""
    state = torch.load(path, weights_only=True)
    change(state)
    state["checksum"] = state_checksum(state)
    torch.save(state, path)


def test_nan_prompts_in_the_state_are_refused_not_blamed_on_ot(make_site, saved):
    site, _ = saved
    resave(site.state_path, lambda s: s["prompts"]["private_ctx"].fill_(float("nan")))
    refused(make_site, site.state_path, site.state_path.read_bytes(), "NaN or Inf", "private_ctx")


def test_a_float64_prompt_beyond_float32_range_is_refused(make_site, saved):
    site, _ = saved
    resave(site.state_path, lambda s: s["prompts"].update(private_ctx=torch.full((4, 64), 1e39, dtype=torch.float64)))
    refused(make_site, site.state_path, site.state_path.read_bytes(), "private_ctx", "beyond float32")


def flip_a_byte_of(path, tensor: torch.Tensor) -> None:
    """Flip the lowest bit of one value of `tensor` where torch.save stored it (the zip keeps tensors verbatim)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = bytes(data).find(raw)
    assert at >= 0 and bytes(data).find(raw, at + 1) < 0
    data[at + 4 * 37] ^= 0x01  # value 37's least significant mantissa byte: a tiny, silent change
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_private_prompt_is_detected(make_site, saved):
    site, _ = saved
    private = torch.load(site.state_path, weights_only=True)["prompts"]["private_ctx"]
    flip_a_byte_of(site.state_path, private)
    changed = torch.load(site.state_path, weights_only=True)["prompts"]["private_ctx"]  # torch loads it silently
    assert torch.isfinite(changed).all() and (changed != private).sum() == 1
    refused(make_site, site.state_path, site.state_path.read_bytes(), "corrupt", "checksum")


def test_prompts_of_another_algorithm_are_refused(make_site, saved):
    site, _ = saved
    resave(site.state_path, lambda s: s["prompts"].pop("private_ctx"))  # as saved by a single-prompt algorithm
    refused(
        make_site,
        site.state_path,
        site.state_path.read_bytes(),
        "holds the prompts ['shared_ctx']",
        "another algorithm",
    )


def test_a_state_of_the_earlier_version_still_loads(make_site, saved):
    """Files written before the checksum (no "format") are read as they are: nothing saved is lost."""
    site, _ = saved
    state = torch.load(site.state_path, weights_only=True)
    old = {"round": state["round"], "classes": state["classes"], "prompts": state["prompts"]}
    torch.save(old, site.state_path)
    again = make_site()
    torch.testing.assert_close(again.trainer.model.learner.private_ctx.detach(), state["prompts"]["private_ctx"])
    assert again.dp_releases == 0


def test_the_state_is_checksummed_owner_only_and_round_trips(make_site, saved):
    site, _ = saved
    site.save_state(1)
    state = torch.load(site.state_path, weights_only=True)
    assert state["format"] == STATE_FORMAT and state["checksum"] == state_checksum(state) and state["round"] == 1
    assert stat.S_IMODE(os.stat(site.state_path).st_mode) == 0o600  # the private prompt
    again = make_site()
    np.testing.assert_array_equal(again.trainer.payload()[SHARED], site.trainer.payload()[SHARED])
    torch.testing.assert_close(again.trainer.model.learner.private_ctx, site.trainer.model.learner.private_ctx)

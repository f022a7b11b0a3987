"""The CKKS job on the real `nvflare simulator`: same accuracy as plaintext on the same seeds, ciphertext-only on
the server, and the HE bad inputs (no contexts, plaintext updates at a CKKS server) stopping with clear errors."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.flare.he.context import prepare_simulator_contexts
from fedrsclip.flare.model_file import load_npz
from fedrsclip.he import CLIENT_CONTEXT_FILE, HEADER_KEY, EncryptedUpdate, decrypt_average, load_context
from fedrsclip.results_file import find_results
from helpers import make_job, simulate

pytestmark = pytest.mark.slow

SITES, ROUNDS = 3, 3
FAST = ["data.synthetic_per_class=40"]
# Both compared runs add the same (seeded) DP noise: it must be added before encryption, and both runs see it.
DP = ["privacy.dp_clip_norm=1.0", "privacy.dp_noise_multiplier=0.1", "privacy.dp_seed=7"]


def _run(
    tmp: Path,
    name: str,
    he: bool,
    contexts: bool = True,
    sites: int = SITES,
    rounds: int = ROUNDS,
    extra: tuple[str, ...] = (),
) -> Path:
    job = make_job(tmp / f"job-{name}", sites=sites, rounds=rounds, overrides=[*FAST, *extra], he=he)
    ws = tmp / f"ws-{name}"
    if he and contexts:
        prepare_simulator_contexts(ws)
    simulate(job, ws, sites)
    return ws


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("he")
    return {"plain": _run(tmp, "plain", he=False, extra=tuple(DP)), "ckks": _run(tmp, "ckks", he=True, extra=tuple(DP))}


def _results(ws: Path) -> dict:
    return json.loads(find_results(ws).read_text())


def _final(ws: Path, site: str) -> dict[str, np.ndarray]:
    path = ws / site / "simulate_job" / "fedrsclip" / f"{site}-final.pt"
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True)["prompts"].items()}


def test_ckks_accuracy_matches_plaintext_on_the_same_seeds(runs):
    plain, ckks = _results(runs["plain"]), _results(runs["ckks"])
    assert plain["status"] == ckks["status"] == "finished" and ckks["errors"] == []
    for p_round, c_round in zip(plain["rounds"], ckks["rounds"]):
        for site in plain["sites"]:
            assert abs(p_round["sites"][site]["accuracy"] - c_round["sites"][site]["accuracy"]) <= 0.3
    assert abs(plain["final"]["weighted_accuracy"] - ckks["final"]["weighted_accuracy"]) <= 0.3
    for site in plain["sites"]:  # the decrypted global prompts equal the plaintext ones up to CKKS noise
        diff = np.abs(_final(runs["plain"], site)["shared_ctx"] - _final(runs["ckks"], site)["shared_ctx"]).max()
        assert diff < 1e-4, (site, diff)


def test_dp_noise_with_ckks_reports_epsilon_every_round(runs):
    ckks = _results(runs["ckks"])
    for site in ckks["sites"]:
        eps = [r["sites"][site]["dp_epsilon"] for r in ckks["rounds"]]
        assert all(e > 0 for e in eps) and eps == sorted(eps) and len(set(eps)) == ROUNDS  # grows every round
    log = (runs["ckks"] / "site-1" / "log.txt").read_text(errors="replace")
    # order at the site: clip + noise (in the training step), then the allow-list, then encryption (result filter)
    assert log.index("outgoing keys") < log.index("shared-prompt update encrypted")


def test_bytes_per_round_plaintext_and_ckks(runs):
    plain, ckks = _results(runs["plain"]), _results(runs["ckks"])
    for p_round, c_round in zip(plain["rounds"], ckks["rounds"]):
        for site in plain["sites"]:
            assert p_round["sites"][site]["bytes_up"] == 4 * 64 * 4
            assert 60_000 < c_round["sites"][site]["bytes_up"] < 100 * 1024  # one N=4096 ciphertext
            assert c_round["sites"][site]["bytes_up_plain"] == 4 * 64 * 4  # the values it encrypts
    assert ckks["encryption"] == "ckks" and "encryption" not in plain


def test_server_holds_only_ciphertext(runs):
    ws = runs["ckks"]
    app = ws / "server" / "simulate_job" / "app_server"
    weights, info = load_npz(app / "FL_global_model.npz")
    assert set(weights) == {"shared_ctx", HEADER_KEY} and weights["shared_ctx"].dtype == np.uint8
    # A site's key opens the server's file, and it holds what the sites trained from (positive control).
    ctx = load_context((ws / "startup" / CLIENT_CONTEXT_FILE).read_bytes(), "client", need_secret=True)
    decrypted = decrypt_average(ctx, EncryptedUpdate.from_data(weights, "server file"), "server file")["shared_ctx"]
    assert decrypted.shape == (4, 64)
    final = _final(ws, "site-1")["shared_ctx"]
    assert np.abs(decrypted - final).max() < 1e-4
    # No plaintext shared or private prompt anywhere in the server's workspace.
    blobs = {}
    for path in (ws / "server").rglob("*"):
        if path.is_file():
            blobs[str(path)] = path.read_bytes()
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    blobs.update({f"{path}::{m}": archive.read(m) for m in archive.namelist()})
    for site in ("site-1", "site-2", "site-3"):
        for key, prompt in _final(ws, site).items():
            rows = [row.astype("<f4").tobytes() for row in prompt]
            hits = [name for name, data in blobs.items() for row in rows if row in data]
            assert not hits, f"{site}'s {key} in plaintext on the server: {hits[:3]}"
    log = (ws / "server" / "log.txt").read_text(errors="replace")
    assert len(re.findall(r"added the encrypted update of site-\d", log)) == SITES * ROUNDS


def test_missing_contexts_stop_the_job_naming_the_file(tmp_path):
    ws = _run(tmp_path, "nocontext", he=True, contexts=False, sites=2, rounds=2)
    results = _results(ws)
    assert results["status"] == "failed"
    assert results["rounds"][0]["sites"] == {} or all(v.get("missing") for v in results["rounds"][0]["sites"].values())
    errors = [e for e in results["errors"] if e.get("kind") == "he"]
    assert errors and all(CLIENT_CONTEXT_FILE in e["error"] and "he-context" in e["error"] for e in errors)


def test_plaintext_updates_at_a_ckks_server_are_rejected(tmp_path):
    job = make_job(tmp_path / "job", sites=2, rounds=2, overrides=FAST, he=True)
    client = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(client.read_text())
    config["task_data_filters"], config["task_result_filters"] = [], []  # sites without the CKKS filters
    client.write_text(json.dumps(config))
    ws = tmp_path / "ws"
    prepare_simulator_contexts(ws)
    simulate(job, ws, 2)
    log = (ws / "server" / "log.txt").read_text(errors="replace")
    assert re.search(r"update of site-1 for round 1 rejected, not aggregated: .*plaintext values .*--he", log)
    results = _results(ws)
    assert results["status"] != "finished"
    first = results["rounds"][0]["sites"]
    assert first["site-1"]["missing"] and first["site-1"]["kind"] == "rejected", first

"""Nothing private leaves a site: the allow-list check, and a real simulator run (with DP on) whose whole server
workspace is searched for every site's private prompt (with the shared prompt as the positive control), and whose
uploads, as FLARE sent them, carry no statistic of the raw update."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.algorithms import SHARED, get_algorithm
from fedrsclip.flare.upload_audit import read_audit
from fedrsclip.privacy import PrivacyError, check_outgoing
from fedrsclip.results_file import find_results
from helpers import make_job, simulate

SITES, ROUNDS = 3, 2
DP = ["privacy.dp_clip_norm=0.5", "privacy.dp_noise_multiplier=0.5"]
RAW_UPDATE_STATISTICS = ("dp_update_norm", "dp_clipped")
SHAPES = {SHARED: (4, 64)}


def _payload(**extra):
    return {SHARED: np.zeros((4, 64), np.float32), **extra}


# ---- the allow-list ------------------------------------------------------------------------------------------------
def test_the_shared_prompt_alone_passes():
    out = check_outgoing(_payload(), get_algorithm("fedrsclip"), SHAPES, "site-1")
    assert list(out) == [SHARED] and out[SHARED].dtype == np.float32


@pytest.mark.parametrize("extra", ["private_ctx", "labels", "shared_ctx_copy"])
def test_any_other_key_is_refused(extra):
    with pytest.raises(PrivacyError, match=f"refusing to send \\['{extra}'\\]"):
        check_outgoing(_payload(**{extra: np.zeros((4, 64), np.float32)}), get_algorithm("fedrsclip"), SHAPES)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_refused(bad):
    payload = _payload()
    payload[SHARED][1, 2] = bad
    with pytest.raises(PrivacyError, match="NaN or Inf"):
        check_outgoing(payload, get_algorithm("fedrsclip"), SHAPES)


def test_wrong_shape_dtype_and_missing_keys_are_refused():
    algorithm = get_algorithm("fedrsclip")
    with pytest.raises(PrivacyError, match="shape"):
        check_outgoing({SHARED: np.zeros((5, 64), np.float32)}, algorithm, SHAPES)
    with pytest.raises(PrivacyError, match="dtype"):
        check_outgoing({SHARED: np.array(["a"] * 4)}, algorithm, None)
    with pytest.raises(PrivacyError, match="lacks"):
        check_outgoing({}, algorithm, SHAPES)


def test_local_sends_nothing_and_classifier_sends_exactly_its_weights():
    with pytest.raises(PrivacyError, match="may send only \\[\\]"):
        check_outgoing(_payload(), get_algorithm("local"), SHAPES)
    assert check_outgoing({}, get_algorithm("local"), SHAPES) == {}
    full = get_algorithm("fedavg-full")
    shapes = {"head.weight": (10, 8), "head.bias": (10,)}
    weights = {k: np.ones(s, np.float32) for k, s in shapes.items()}
    assert set(check_outgoing(weights, full, shapes)) == set(shapes)
    with pytest.raises(PrivacyError, match="refusing to send \\['private_ctx'\\]"):
        check_outgoing({**weights, "private_ctx": np.zeros(3, np.float32)}, full, shapes)
    with pytest.raises(PrivacyError, match="needs the trainer's shapes"):
        check_outgoing(weights, full, None)


# ---- the leak test ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("leak")
    job = make_job(tmp / "job", sites=SITES, rounds=ROUNDS, overrides=["data.synthetic_per_class=20", *DP], audit=True)
    ws = tmp / "ws"
    proc = simulate(job, ws, SITES)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return ws


def _server_blobs(ws: Path) -> dict[str, bytes]:
    """Every file of the server workspace, and every member of every zip among them (.npz, .pt, job zips)."""
    blobs = {}
    for path in sorted((ws / "server").rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blobs[str(path)] = data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    blobs[f"{path}::{member}"] = archive.read(member)
    return blobs


def _needles(prompt: np.ndarray) -> list[bytes]:
    """The float32 little-endian bytes of each row, and the 6-significant-digit text of a few values."""
    rows = [row.astype("<f4").tobytes() for row in prompt]
    texts = [f"{v:.6g}".encode() for v in prompt.ravel()[:8] if len(re.sub(r"\D", "", f"{abs(v):.6g}")) >= 5]
    return rows + texts


def _final(ws: Path, site: str) -> dict[str, np.ndarray]:
    path = ws / site / "simulate_job" / "fedrsclip" / f"{site}-final.pt"
    prompts = torch.load(path, map_location="cpu", weights_only=True)["prompts"]
    return {k: v.numpy() for k, v in prompts.items()}


def test_no_private_prompt_reaches_the_server(run):
    blobs = _server_blobs(run)
    assert len(blobs) > 5 and any(name.endswith("fedrsclip_results.json") for name in blobs)
    for i in range(1, SITES + 1):
        private = _final(run, f"site-{i}")["private_ctx"]
        assert private.shape == (4, 64)
        needles = _needles(private)
        assert len(needles) >= 4 + 4
        with zipfile.ZipFile(run / f"site-{i}" / "simulate_job" / "fedrsclip" / f"site-{i}-state.pt") as archive:
            kept = b"".join(archive.read(m) for m in archive.namelist())
        assert all(row in kept for row in needles[:4])  # the needles are right: the site itself keeps them
        hits = [(name, needle) for needle in needles for name, data in blobs.items() if needle in data]
        assert not hits, f"site-{i}'s private prompt found on the server: {hits[:3]}"


def test_the_search_finds_the_shared_prompt_on_the_server(run):
    """Positive control: the same search finds the (sent, aggregated) shared prompt in the global model file."""
    blobs = _server_blobs(run)
    model = [
        name
        for name in blobs
        if name.endswith("FL_global_model.npz::shared_ctx.npy") and "best_" not in Path(name.split("::")[0]).name
    ]
    assert len(model) == 1
    for i in range(1, SITES + 1):
        shared = _final(run, f"site-{i}")["shared_ctx"]
        for needle in _needles(shared)[:4]:  # the row bytes
            assert needle in blobs[model[0]]


def test_every_result_carried_only_the_shared_prompt(run):
    results = json.loads(find_results(run).read_text())
    assert results["status"] == "finished" and results["errors"] == []
    for record in results["rounds"]:
        for site in results["sites"]:
            assert record["sites"][site]["bytes_up"] == 4 * 64 * 4  # the shared prompt's bytes, nothing more
    for i in range(1, SITES + 1):
        log = (run / f"site-{i}" / "log.txt").read_text(errors="replace")
        checked = re.findall(rf"site-{i}: outgoing keys: \['shared_ctx'\]", log)
        assert len(checked) == ROUNDS, f"site-{i}: the allow-list check ran {len(checked)} times, not {ROUNDS}"


def test_no_statistic_of_the_raw_update_leaves_a_site(run):
    """With DP on, the update's norm before clipping and whether it was clipped stay in the site's log: neither the
    uploads as FLARE sent them (every field of the DXO meta, audited) nor anything on the server carries them."""
    audits = [e for p in sorted(run.glob("site-*/simulate_job/fedrsclip/upload_audit-*.json")) for e in read_audit(p)]
    assert len(audits) == SITES * ROUNDS
    for entry in audits:
        assert "record:metrics.dp_epsilon" in entry["fields"]  # the audit sees the metrics that are sent
        assert not [f for f in entry["fields"] if any(s in f for s in RAW_UPDATE_STATISTICS)], entry["fields"]
    for name, data in _server_blobs(run).items():
        assert not any(s.encode() in data for s in RAW_UPDATE_STATISTICS), name
    log = (run / "site-1" / "log.txt").read_text(errors="replace")
    assert "update norm" in log and "kept at this site, never sent" in log

"""The multi-modal job on the real `nvflare simulator` through `fedrsclip demo --modalities` (what `make demo-mm`
runs): sites of two modalities (and one holding both) on synthetic multi-label S2/S1 scenes with the RANDOM-weight
tiny CLIP. Micro F1 rises over rounds, each modality's adapter is averaged among its own sites only, the results
carry the missing-modality rows, and the CKKS variant gives the plaintext run's scores with ciphertext-only on the
server. Simulator runs are slow tests; the job export (`fedrsclip job --modalities`) is checked in the default suite.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.cli import main
from fedrsclip.flare.job import JobSpec
from fedrsclip.flare.model_file import load_npz
from fedrsclip.protocol import SHARED, adapter_keys
from fedrsclip.results_file import find_results
from fedrsclip.tools.reporting.run_table import CAVEAT, caveat, format_table

SITES, ROUNDS, MODALITIES = 3, 8, "s2,s1,s2+s1"


def _demo(tmp: Path, name: str, he: bool = False, rounds: int = ROUNDS) -> tuple[Path, str]:
    """`fedrsclip demo --modalities ...` (make demo-mm): the workspace and what it printed."""
    ws = tmp / f"ws-{name}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                "demo",
                "--modalities",
                MODALITIES,
                "--sites",
                str(SITES),
                "--rounds",
                str(rounds),
                "--workspace",
                str(ws),
                *(["--he"] if he else []),
            ]
        )
    log = ws.with_name(ws.name + ".log")
    assert rc == 0, out.getvalue()[-3000:] + (log.read_text()[-3000:] if log.is_file() else "")
    return ws, out.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str]:
    return _demo(tmp_path_factory.mktemp("mm"), "plain")


@pytest.fixture(scope="module")
def plain(demo) -> Path:
    return demo[0]


def _results(ws: Path) -> dict:
    return json.loads(find_results(ws).read_text())


def _final_state(ws: Path, site: str) -> dict[str, np.ndarray]:
    path = ws / site / "simulate_job" / "fedrsclip" / f"{site}-final.pt"
    return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True)["prompts"].items()}


def test_the_job_declares_the_federations_modalities():
    spec = JobSpec(sites=SITES, modalities=MODALITIES)
    cfg = spec.config()
    assert cfg.multimodal.federation() == ("s2", "s1") and cfg.data.source == "synthetic-mm"
    assert cfg.multimodal.modules(True) == (True, True)  # FW and MIM on in a multi-modal federation by default
    assert JobSpec().job_overrides == ["data.synthetic_sites=10"]  # the default job is unchanged


def test_fedrsclip_job_modalities_writes_them_for_every_site(tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(out), "--sites", "3", "--modalities", MODALITIES]) == 0
    client = json.loads((out / "app" / "config" / "config_fed_client.json").read_text())
    text = json.dumps(client)
    assert f"multimodal.modalities={MODALITIES}" in text and "data.source=synthetic-mm" in text
    capsys.readouterr()
    # bad input stops before anything is written, naming the setting and what to do
    with pytest.raises(SystemExit) as refused:  # refused by the option's type, where the list is given
        main(["job", "--algorithm", "fedrsclip", "--out", str(tmp_path / "bad"), "--modalities", "s2,s9"])
    assert refused.value.code == 2
    assert "--modalities (multimodal.modalities): 's9' is not a modality" in capsys.readouterr().err
    assert main(["job", "--algorithm", "fedavg-full", "--out", str(tmp_path / "full"), "--modalities", "s2,s1"]) == 2
    assert "algorithm fedavg-full has no modality adapters" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "full").exists()


def test_synthetic_multi_modal_runs_carry_the_caveat():
    """The caveat follows the recorded data source: synthetic-mm is generated data too (before: no caveat)."""
    assert caveat({"data_source": "synthetic-mm", "weights": "random"}) == CAVEAT
    assert caveat({"data": "SYNTHETIC multi-modal multi-label scenes (240 S2/S1 pairs, ...)"}) is not None
    assert caveat({"data_source": "manifest", "weights": "tag:openai"}) is None


@pytest.mark.slow
def test_the_demo_prints_the_per_site_f1_table_labelled(demo):
    """What `make demo-mm` prints: the per-round, per-site micro F1 table and the final model's F1/mAP rows, with
    the synthetic-data and random-weight caveat."""
    _, out = demo
    assert "*** synthetic data, RANDOM-weight CLIP — not meaningful accuracy ***" in out
    assert re.search(r"\[demo\] round 3/8 done .*; mean micro F1 [\d.]+% after round 2", out)
    assert "micro F1 (%, multi-label scenes) of the global model after each round" in out
    assert re.search(r"^round\s+site-1\s+site-2\s+site-3\s+mean\s+weighted$", out, re.M)
    for row in ("overall (weighted)", "s2 only", "s1 only"):
        assert re.search(rf"^{re.escape(row)}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+$", out, re.M), row


@pytest.mark.slow
def test_micro_f1_rises_over_rounds(plain):
    results = _results(plain)
    assert results["status"] == "finished" and results["errors"] == [], results["errors"]
    assert "SYNTHETIC multi-modal multi-label scenes" in results["data"] and "RANDOM" in results["backbone"]
    f1 = [results["initial"]["weighted_micro_f1"]] + [r["weighted_micro_f1"] for r in results["rounds"]]
    mean_ap = [results["initial"]["weighted_mAP"]] + [r["weighted_mAP"] for r in results["rounds"]]
    # Measured (seed 0, 2 shared cores): micro F1 0 -> ~27, mAP ~30 -> ~60 over 8 rounds.
    assert f1[-1] > f1[0] + 15, f1
    assert max(f1[-3:]) > max(f1[:3]) + 10, f1
    assert mean_ap[-1] > mean_ap[0] + 10, mean_ap
    assert set(results["final"]["modalities"]) == {"s2", "s1"}
    assert results["best"]["weighted_micro_f1"] is not None


@pytest.mark.slow
def test_each_site_sends_its_own_modalities_and_the_server_averages_each_group(plain):
    sent = {s: v["bytes_up"] for s, v in _results(plain)["rounds"][0]["sites"].items()}
    prompt, adapter = 4 * 4 * 64, 4 * 2 * 16 * 64  # tiny CLIP: n_ctx 4 x width 64; rank 16 x E 64, two tensors
    assert sent == {"site-1": prompt + adapter, "site-2": prompt + adapter, "site-3": prompt + 2 * adapter}
    weights, _ = load_npz(plain / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")
    assert set(weights) == {SHARED, *adapter_keys(["s2", "s1"])}
    finals = {s: _final_state(plain, s) for s in ("site-1", "site-2", "site-3")}
    # Every site holds the global adapters of both modalities after the final evaluation (MF): the same values.
    for key in adapter_keys(["s2", "s1"]):
        np.testing.assert_array_equal(finals["site-1"][f"adapter.{key[len('adapter.') :]}"], weights[key])
    # The sigmoid bias stays at each site (never sent): the sites' differ.
    assert not np.allclose(finals["site-1"]["calibration.bias"], finals["site-2"]["calibration.bias"])
    assert "calibration.bias" not in weights


@pytest.mark.slow
def test_report_of_the_multi_modal_run(plain, capsys):
    assert main(["report", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "synthetic data, RANDOM-weight CLIP" in out and "micro F1 (%, multi-label scenes)" in out
    for row in ("overall (weighted)", "s2 only", "s1 only"):
        assert row in out
    # the results file's table, and the zero-shot reference from the sites' (site-local) predictions: its mAP
    zero_shot = [line for line in out.splitlines() if line.startswith("zero-shot CLIP")]
    assert len(zero_shot) == 1 and re.search(r": mAP [\d.]+% on \d+ test scenes of all sites$", zero_shot[0])
    table = format_table(_results(plain)).splitlines()
    assert [line for line in out.splitlines() if not line.startswith("zero-shot CLIP")][: len(table)] == table
    assert f"results file: {find_results(plain)}" in out
    for name in ("accuracy_per_round", "per_site_accuracy"):  # drawn by micro F1 for label sets (before: none)
        assert f"figure: {find_results(plain).parent / name}.png" in out


@pytest.mark.slow
def test_ckks_gives_the_plaintext_scores_and_the_server_only_ciphertext(plain, tmp_path):
    """CKKS with MF: each modality's adapter is encrypted and summed within its group (its own total weight)."""
    from fedrsclip.he import HEADER_KEY, EncryptedUpdate

    ckks, _ = _demo(tmp_path, "ckks", he=True)
    a, b = _results(plain), _results(ckks)
    assert b["status"] == "finished" and b["errors"] == [] and b.get("encryption") == "ckks"
    for site, entry in b["final"]["sites"].items():
        assert abs(entry["mAP"] - a["final"]["sites"][site]["mAP"]) < 1.0, site
    weights, _ = load_npz(ckks / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")
    update = EncryptedUpdate.from_data(weights, "global")
    assert HEADER_KEY in weights and all(v.dtype == np.uint8 for v in weights.values())
    assert update.group_weights.keys() == {"s2", "s1"} and set(update.shapes) == {SHARED, *adapter_keys(["s2", "s1"])}


@pytest.mark.slow
def test_a_modality_at_one_site_only_is_a_results_warning_on_flare(tmp_path):
    """MF with s1 at site-2 alone ("s2,s1" over 3 sites): the server says so in the log and the results file (the
    "average" it sends every site is site-2's own adapter), and MIM is noted inactive (no site holds both)."""
    ws = tmp_path / "ws"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["demo", "--modalities", "s2,s1", "--sites", "3", "--rounds", "1", "--workspace", str(ws)])
    assert rc == 0, out.getvalue()[-3000:]
    results = _results(ws)
    (warning,) = [w for w in results["warnings"] if w["kind"] == "single_site_modality"]
    assert warning["modality"] == "s1" and warning["site"] == "site-2" and warning["round"] == 1
    printed = out.getvalue()
    assert "warning: the adapter of modality s1 was sent by site-2 alone in round 1" in printed
    assert "MIM (multimodal.mim) was inactive at every site" in printed

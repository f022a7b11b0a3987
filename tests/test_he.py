"""CKKS encryption of the shared prompt: real TenSEAL ciphertexts, the server's keyless sum, per-site weights, the
wire size against FLARE's stock HE path, and every bad input refused with a message naming what to fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tenseal as ts  # a pinned requirement: the tests run, never skip

from fedrsclip.flare.he.context import install_kit_contexts, prepare_simulator_contexts
from fedrsclip.he import (
    CLIENT_CONTEXT_FILE,
    HEADER_KEY,
    SERVER_CONTEXT_FILE,
    EncryptedSum,
    EncryptedUpdate,
    HEError,
    decrypt_average,
    encrypt_update,
    key_id,
    load_context,
    make_contexts,
)


@pytest.fixture(scope="module")
def contexts():
    client, server = make_contexts()
    return load_context(client, "client", need_secret=True), load_context(server, "server", need_secret=False)


def _prompts(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"shared_ctx": rng.normal(0, 0.3, (4, 512)).astype(np.float32)} for _ in range(n)]


def _aggregate(client_ctx, server_ctx, payloads, weights):
    total = EncryptedSum(server_ctx)
    for k, (payload, weight) in enumerate(zip(payloads, weights)):
        update = EncryptedUpdate.from_data(encrypt_update(client_ctx, payload, weight).to_data(), f"site-{k + 1}")
        total.add(update, f"site-{k + 1}")
    return total.result()


def test_weighted_mean_through_ciphertexts_applies_each_sites_weight(contexts):
    client_ctx, server_ctx = contexts
    payloads, weights = _prompts(5), [10.0, 400.0, 37.0, 2500.0, 84.0]
    result = _aggregate(client_ctx, server_ctx, payloads, weights)
    got = decrypt_average(client_ctx, EncryptedUpdate.from_data(result.to_data(), "global"), "global")["shared_ctx"]
    stacked = np.stack([p["shared_ctx"] for p in payloads]).astype(np.float64)
    weighted = np.tensordot(np.asarray(weights) / sum(weights), stacked, axes=1)
    unweighted = stacked.mean(axis=0)
    assert got.shape == (4, 512) and got.dtype == np.float32
    error = np.abs(got - weighted).max()
    assert error < 1e-6, error
    assert np.abs(got - unweighted).max() > 100 * error  # the weights really changed the result
    assert result.contributions == 5 and result.weight == sum(weights)


def test_server_context_cannot_decrypt_and_one_ciphertext_fits_2048_values(contexts):
    client_ctx, server_ctx = contexts
    update = encrypt_update(client_ctx, _prompts(1)[0], 3.0)
    vector = ts.ckks_vector_from(server_ctx, update.vectors["shared_ctx"])
    with pytest.raises(ValueError, match="secret"):
        vector.decrypt()
    assert vector.size() == 2048
    assert update.nbytes < 100 * 1024  # one N=4096 ciphertext (issue target: CKKS upload <= 100 KB)


def test_plaintext_where_ciphertext_expected_and_reverse_are_refused(contexts):
    client_ctx, server_ctx = contexts
    with pytest.raises(HEError, match="plaintext values.*--he"):
        EncryptedUpdate.from_data(_prompts(1)[0], "the update from site-2")
    data = encrypt_update(client_ctx, _prompts(1)[0], 1.0).to_data()
    data["shared_ctx"] = np.zeros(2048, np.float32)  # a plaintext array in an encrypted update
    with pytest.raises(HEError, match="not a serialized ciphertext"):
        EncryptedUpdate.from_data(data, "the update from site-2")


def test_size_and_shape_mismatches_are_rejected_before_adding(contexts):
    client_ctx, server_ctx = contexts
    total = EncryptedSum(server_ctx)
    total.add(encrypt_update(client_ctx, _prompts(1)[0], 1.0), "site-1")
    small = encrypt_update(client_ctx, {"shared_ctx": np.ones((2, 512), np.float32)}, 1.0)
    with pytest.raises(HEError, match="do not match"):
        total.add(small, "site-2")
    lying = encrypt_update(client_ctx, {"shared_ctx": np.ones((2, 512), np.float32)}, 1.0)
    lying.shapes = {"shared_ctx": (4, 512)}  # claims 2,048 values, holds 1,024
    with pytest.raises(HEError, match="holds 1024 encrypted values"):
        total.add(lying, "site-3")
    garbage = EncryptedUpdate({"shared_ctx": b"\x00" * 100}, {"shared_ctx": (4, 512)}, 1.0, key_id(client_ctx))
    with pytest.raises(HEError, match="not a ciphertext"):
        total.add(garbage, "site-4")
    assert total.count == 1 and total.weight == 1.0  # nothing of the bad ones was added


def test_another_key_is_detected_by_the_server_and_by_the_site(contexts):
    client_ctx, server_ctx = contexts
    other = load_context(make_contexts()[0], "other", need_secret=True)
    total = EncryptedSum(server_ctx)
    total.add(encrypt_update(client_ctx, _prompts(1)[0], 1.0), "site-1")
    with pytest.raises(HEError, match="not the one the other sites use"):
        total.add(encrypt_update(other, _prompts(1)[0], 1.0), "site-2")
    with pytest.raises(HEError, match="same client context"):
        decrypt_average(other, total.result(), "the global model")


def test_a_rogue_key_under_a_forged_key_id_is_refused_by_the_sites(
    contexts, tiny_backbone, synth_manifest, feature_cache, tmp_path
):
    """Issue 11 item 5. A site encrypts under its own key and writes the federation's key id into the header: the
    server cannot tell (it holds no secret key) and adds it; the aggregate decrypts to values around 1e7. Each
    site then refuses the global prompt as implausible, names the setting, and keeps its state; an honest
    aggregate of the same round is accepted."""
    from fedrsclip.protocol import PayloadError
    from fedrsclip.site import PromptSite
    from helpers import tiny_config

    client_ctx, server_ctx = contexts
    rogue_ctx = load_context(make_contexts()[0], "rogue", need_secret=True)
    cfg = tiny_config("train.lr=0.05", cache_dir=feature_cache)
    site = PromptSite(cfg, "site-1", synth_manifest, tiny_backbone, state_dir=tmp_path, progress=False)
    honest = site.run_round(None, 0)
    before = site.state_path.read_bytes()

    forged = encrypt_update(rogue_ctx, honest.payload, 120.0)
    forged.key_id = key_id(client_ctx)  # the federation's id in the header
    total = EncryptedSum(server_ctx)
    for name, update in (("site-1", encrypt_update(client_ctx, honest.payload, honest.weight)), ("site-2", forged)):
        total.add(EncryptedUpdate.from_data(update.to_data(), name), name)  # the server accepts both
    mixed = decrypt_average(client_ctx, EncryptedUpdate.from_data(total.result().to_data(), "global"), "global")
    assert np.isfinite(mixed["shared_ctx"]).all() and np.abs(mixed["shared_ctx"]).max() > 1e5
    with pytest.raises(
        PayloadError,
        match=r"site-1: the received global shared_ctx is implausible.*"
        r"train\.max_global_change.*same client context",
    ):
        site.run_round(mixed, 1)
    assert site.state_path.read_bytes() == before

    fair = EncryptedSum(server_ctx)
    for name in ("site-1", "site-2"):
        fair.add(encrypt_update(client_ctx, honest.payload, honest.weight), name)
    good = decrypt_average(client_ctx, fair.result(), "global")
    assert site.run_round(good, 1).record.received["samples"] == len(site.test_set)


def test_a_header_weight_that_is_no_sum_of_sample_counts_is_refused(contexts):
    client_ctx, server_ctx = contexts
    result = _aggregate(client_ctx, server_ctx, _prompts(3), [10.0, 20.0, 30.0])
    for weight, contributions in ((60.5, 3), (2.0, 3), (60.0, 0)):
        result.weight, result.contributions = weight, contributions
        with pytest.raises(HEError, match="not a sum of that many training sample counts"):
            decrypt_average(client_ctx, result, "the global model")


def test_context_files_are_checked(contexts, tmp_path):
    client, server = make_contexts()
    with pytest.raises(HEError, match="holds no secret key"):
        load_context(server, "site-1/startup/server_context.tenseal", need_secret=True)
    with pytest.raises(HEError, match="must never have it"):
        load_context(client, "server/startup/client_context.tenseal", need_secret=False)
    with pytest.raises(HEError, match="not a TenSEAL context.*he-context"):
        load_context(b"not a context", "startup/client_context.tenseal", need_secret=True)
    with pytest.raises(HEError, match="missing or empty"):
        load_context(b"", "startup/client_context.tenseal", need_secret=True)
    with pytest.raises(HEError, match="NaN or Inf"):
        encrypt_update(contexts[0], {"shared_ctx": np.full(4, np.nan)}, 1.0)
    with pytest.raises(HEError, match="smaller scale"):  # beyond the parameters' headroom: refused, not wrapped
        encrypt_update(contexts[0], {"shared_ctx": np.full(4, 1e9)}, 1.0)


def test_simulator_and_kit_contexts(tmp_path):
    startup, made = prepare_simulator_contexts(tmp_path / "ws")
    assert made and (startup / CLIENT_CONTEXT_FILE).is_file() and (startup / SERVER_CONTEXT_FILE).is_file()
    before = (startup / CLIENT_CONTEXT_FILE).read_bytes()
    assert prepare_simulator_contexts(tmp_path / "ws") == (startup, False)  # kept: a rerun keeps its key
    assert (startup / CLIENT_CONTEXT_FILE).read_bytes() == before

    prod = tmp_path / "prod_00"
    for name, kind in (
        ("server", "fed_server.json"),
        ("site-1", "fed_client.json"),
        ("site-2", "fed_client.json"),
        ("admin@nvidia.com", "fed_admin.json"),
    ):
        (prod / name / "startup").mkdir(parents=True)
        (prod / name / "startup" / kind).write_text("{}")
    (prod / "server" / "startup" / CLIENT_CONTEXT_FILE).write_bytes(before)  # a leftover secret key on the server
    with pytest.raises(HEError, match="a server must never have: move it away .*--force"):
        install_kit_contexts(prod)  # it may be the only copy of a key: never deleted without --force
    assert (prod / "server" / "startup" / CLIENT_CONTEXT_FILE).read_bytes() == before
    install_kit_contexts(prod, force=True)
    assert not (prod / "server" / "startup" / CLIENT_CONTEXT_FILE).exists()
    load_context((prod / "server" / "startup" / SERVER_CONTEXT_FILE).read_bytes(), "server", need_secret=False)
    keys = {
        key_id(load_context((prod / s / "startup" / CLIENT_CONTEXT_FILE).read_bytes(), s, need_secret=True))
        for s in ("site-1", "site-2")
    }
    assert len(keys) == 1  # one key for all sites
    assert not (prod / "admin@nvidia.com" / "startup" / CLIENT_CONTEXT_FILE).exists()
    key = (prod / "site-1" / "startup" / CLIENT_CONTEXT_FILE).read_bytes()
    with pytest.raises(
        HEError,
        match="already holds the federation's secret key .*every model saved under the old one undecryptable.*--force",
    ):
        install_kit_contexts(prod)  # a second run keeps the key: models saved under it stay decryptable
    assert (prod / "site-1" / "startup" / CLIENT_CONTEXT_FILE).read_bytes() == key
    install_kit_contexts(prod, force=True)
    assert (prod / "site-1" / "startup" / CLIENT_CONTEXT_FILE).read_bytes() != key
    assert (prod / "site-1" / "startup" / CLIENT_CONTEXT_FILE).stat().st_mode & 0o077 == 0  # the secret key
    (prod / "site-1" / "startup" / "signature.json").write_text("{}")
    with pytest.raises(HEError, match="signed"):
        install_kit_contexts(prod, force=True)


def test_half_a_simulator_pair_is_refused_and_force_says_what_is_lost(tmp_path, caplog):
    startup, _ = prepare_simulator_contexts(tmp_path / "ws")
    key = (startup / CLIENT_CONTEXT_FILE).read_bytes()
    (startup / SERVER_CONTEXT_FILE).unlink()
    with pytest.raises(HEError, match="holds client_context.tenseal but not server_context.tenseal.*--force"):
        prepare_simulator_contexts(tmp_path / "ws")  # was: a new key, silently
    assert (startup / CLIENT_CONTEXT_FILE).read_bytes() == key
    with caplog.at_level("WARNING"):
        assert prepare_simulator_contexts(tmp_path / "ws", force=True) == (startup, True)
    assert "every model saved under the old one undecryptable" in caplog.text
    assert (startup / CLIENT_CONTEXT_FILE).read_bytes() != key


def test_header_is_data_not_code(contexts):
    update = encrypt_update(contexts[0], _prompts(1)[0], 2.0)
    data = update.to_data()
    header = json.loads(bytes(data[HEADER_KEY]).decode())
    assert header["shapes"] == {"shared_ctx": [4, 512]} and header["weight"] == 2.0
    assert set(header) == {"format", "shapes", "weight", "key_id", "contributions"}  # no values in the clear


def test_he_context_command(tmp_path, capsys):
    from fedrsclip.cli import main

    assert main(["he-context", "--simulator", str(tmp_path / "ws")]) == 0
    assert "wrote client and server contexts" in capsys.readouterr().out
    key = (tmp_path / "ws" / "startup" / CLIENT_CONTEXT_FILE).read_bytes()
    assert main(["he-context", "--simulator", str(tmp_path / "ws")]) == 0
    assert "kept the existing" in capsys.readouterr().out
    assert (tmp_path / "ws" / "startup" / CLIENT_CONTEXT_FILE).read_bytes() == key
    with pytest.raises(SystemExit):  # one flag for "replace the key": --force, as everywhere else
        main(["he-context", "--simulator", str(tmp_path / "ws"), "--replace"])
    assert main(["he-context", "--simulator", str(tmp_path / "ws"), "--force"]) == 0
    assert "wrote client and server contexts" in capsys.readouterr().out
    assert (tmp_path / "ws" / "startup" / CLIENT_CONTEXT_FILE).read_bytes() != key
    assert main(["he-context", "--kits", str(tmp_path / "nothing")]) == 2  # a clear error, not a traceback
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["he-context", "--kits", str(tmp_path / "empty")]) == 2
    assert "holds no server or no client startup kit" in capsys.readouterr().err


def test_each_modality_group_is_averaged_over_its_own_senders_under_ckks(contexts):
    """MF under CKKS: sites send the shared prompt and their modality's adapter; the server adds each group's
    ciphertexts, and a site decrypts each group with its own senders' total weight: the shared prompt over all,
    the s2 adapter over the s2 sites, the s1 adapter over the s1 site (before: every entry over the total weight)."""
    client_ctx, server_ctx = contexts
    rng = np.random.default_rng(3)
    down, up = (16, 64), (64, 16)

    def site(modality):
        return {
            "shared_ctx": rng.normal(0, 0.3, (4, 64)).astype(np.float32),
            f"adapter.{modality}.down.weight": rng.normal(0, 0.3, down).astype(np.float32),
            f"adapter.{modality}.up.weight": rng.normal(0, 0.3, up).astype(np.float32),
        }

    payloads, weights = [site("s2"), site("s1"), site("s2")], [30.0, 50.0, 20.0]
    result = _aggregate(client_ctx, server_ctx, payloads, weights)
    assert result.group_weights == {"s2": 50.0, "s1": 50.0} and result.weight == 100.0
    got = decrypt_average(client_ctx, EncryptedUpdate.from_data(result.to_data(), "global"), "global")
    from fedrsclip.protocol import weighted_mean

    plain = weighted_mean(zip(payloads, weights))
    assert set(got) == set(plain)
    for key in plain:
        assert np.abs(got[key] - plain[key]).max() < 1e-6, key
    np.testing.assert_allclose(got["adapter.s1.up.weight"], payloads[1]["adapter.s1.up.weight"], atol=1e-6)


def test_group_weights_that_do_not_match_the_groups_are_refused(contexts):
    client_ctx, server_ctx = contexts
    payload = {
        "shared_ctx": np.zeros((4, 8), np.float32),
        "adapter.s2.down.weight": np.ones((2, 8), np.float32),
        "adapter.s2.up.weight": np.ones((8, 2), np.float32),
    }
    update = encrypt_update(client_ctx, payload, 5.0)
    data = update.to_data()
    header = json.loads(data[HEADER_KEY].tobytes())
    header["group_weights"] = {"s2": 500.0}  # a site claiming more weight for its adapter than for its prompt
    data[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with pytest.raises(HEError, match="group weights"):
        EncryptedSum(server_ctx).add(EncryptedUpdate.from_data(data, "site-1"), "site-1")
    half = {k: v for k, v in payload.items() if k != "adapter.s2.up.weight"}
    with pytest.raises(HEError, match="part of the adapter of modality s2"):
        EncryptedSum(server_ctx).add(encrypt_update(client_ctx, half, 5.0), "site-1")

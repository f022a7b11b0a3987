"""What a site uploads per round: plaintext (values and FLARE's serialized DXO), CKKS (this project's and FLARE's stock
HE path), the full-model baseline, and the real upload measured by the sites' audit in a simulator run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...protocol import payload_nbytes
from .common import bench_config


def plaintext_upload(payload: dict) -> dict:
    """The payload's values and bytes, and FLARE's serialized DXO around them alone (no FLARE headers, no round
    record: a lower bound, which `upload_bytes_plain_bound` says; the full run replaces `upload_bytes_plain` with
    the real upload it measures)."""
    import numpy as np

    out: dict[str, Any] = {
        "payload_values": int(sum(np.asarray(v).size for v in payload.values())),
        "upload_bytes_payload_nbytes": payload_nbytes(payload),
        "upload_bytes_plain_serialized": None,
        "upload_bytes_dxo_envelope": None,
    }
    try:
        from nvflare.apis.dxo import DXO, DataKind, MetaKey

        from ...flare.upload_audit import account

        def size(data: dict) -> dict:
            dxo = DXO(DataKind.WEIGHTS, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 168})
            return account(dxo.to_shareable())

        bare = size(dict(payload))
        out["upload_bytes_plain_serialized"] = bare["total"]
        out["upload_bytes_dxo_envelope"] = size({})["total"]
        out["upload_dxo_breakdown"] = {k: bare[k] for k in ("values", "data_encoding", "meta", "envelope")}
        out["upload_plain_how"] = (
            "lower bound: nvflare fobs.dumps of a WEIGHTS DXO shareable holding the payload and "
            "the sample count only (FLARE's task headers and peer context and the executor's "
            "round record come on top; the full run measures them)"
        )
    except Exception as exc:  # nvflare missing or its API changed: the values' bytes only
        out["upload_plain_how"] = f"numpy nbytes only (FLARE serialization unavailable: {type(exc).__name__}: {exc})"
    out["upload_bytes_plain"] = out["upload_bytes_plain_serialized"] or out["upload_bytes_payload_nbytes"]
    out["upload_bytes_plain_bound"] = (
        f"lower bound: {'bare DXO' if out['upload_bytes_plain_serialized'] else 'the values alone'}; "
        "the full bench measures the size as sent"
    )
    return out


def ckks_upload(values, sites: int = 10) -> dict:
    """The CKKS job's upload as FLARE serializes it (fobs of the WEIGHTS DXO), the aggregation error over `sites`
    sample-weighted updates, and the same payload on FLARE's stock HE path (HEBuilder's default N=8192; its
    CKKSVector decomposer ships the context with every vector)."""
    import numpy as np

    out: dict[str, Any] = {"upload_bytes_ckks": None, "upload_bytes_ckks_stock_flare": None}
    try:
        import tenseal as ts
        from nvflare.apis.dxo import DXO, DataKind, MetaKey
        from nvflare.app_common.decomposers import common_decomposers
        from nvflare.app_opt.he import decomposers
        from nvflare.fuel.utils import fobs
    except ImportError as exc:
        out["upload_ckks_note"] = f"TenSEAL or nvflare is not installed ({exc})"
        return out
    from ...he import DEFAULT_PARAMS, EncryptedSum, decrypt_average, encrypt_update, load_context, make_contexts

    common_decomposers.register()
    decomposers.register()

    def wire(data: dict) -> int:
        dxo = DXO(DataKind.WEIGHTS, data=data, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 168})
        return len(fobs.dumps(dxo.to_shareable()))

    base = np.asarray(values, dtype=np.float32)
    client, server = make_contexts()
    site_ctx = load_context(client, "client", need_secret=True)
    total = EncryptedSum(load_context(server, "server", need_secret=False))
    rng = np.random.default_rng(0)
    updates = [base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(sites)]
    weights = rng.integers(50, 500, sites).astype(float)
    for k, (update, weight) in enumerate(zip(updates, weights)):
        encrypted = encrypt_update(site_ctx, {"shared_ctx": update}, float(weight))
        total.add(encrypted, f"site-{k + 1}")
        if k == 0:
            out["upload_bytes_ckks"] = wire(encrypted.to_data())
            out["upload_bytes_ckks_ciphertext"] = encrypted.nbytes
    mean = decrypt_average(site_ctx, total.result(), "bench")["shared_ctx"]
    expected = np.tensordot(weights / weights.sum(), np.stack(updates).astype(np.float64), axes=1)
    out["ckks_aggregation_max_error"] = float(np.abs(mean - expected).max())

    stock = ts.context(
        ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40], encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC
    )
    stock.generate_relin_keys()
    stock.global_scale = 2**40
    out["upload_bytes_ckks_stock_flare"] = wire({"shared_ctx": ts.ckks_vector(stock, base.ravel().tolist())})
    params = DEFAULT_PARAMS
    out["upload_ckks_how"] = (
        f"fobs of the WEIGHTS DXO: this project's CKKS update (N={params.poly_modulus_degree}, "
        f"moduli {list(params.coeff_mod_bit_sizes)}, scale 2^{params.scale_bits}; error over "
        f"{sites} weighted sites after decryption) vs FLARE's stock HE path (N=8192, the "
        "context with every vector)"
    )
    return out


def full_model_upload(num_classes: int = 21) -> dict:
    from ...baselines.classifier import build_classifier, classifier_num_params

    cfg = bench_config("cpu", algorithm="fedavg-full")
    model = build_classifier(cfg, num_classes)
    values = classifier_num_params(model)
    return {
        "upload_bytes_full_model": 4 * values,
        "full_model_values": values,
        "full_model_arch": f"{cfg.classifier.arch}, {num_classes} classes, float32",
    }


def upload_from_audits(workspace: Path, values_bytes: int = 2048 * 4) -> dict:
    """The real plaintext upload per site per round, from the sites' upload audits of a simulator run.

    The job's model sends fewer values than ViT-B/16; its serialized update differs from a ViT-B/16 one only in
    the array's bytes as long as both arrays take the same msgpack length prefix (256 B to 64 KiB: bin 16), so the
    ViT-B/16 figure is the measured total with the values swapped: total - job values + `values_bytes`.
    """
    from ...flare.upload_audit import read_audit

    entries = [e for p in sorted(workspace.glob("site-*/*/fedrsclip/upload_audit-*.json")) for e in read_audit(p)]
    if not entries:
        return {"upload_bytes_plain_measured": None, "upload_note": f"no upload audit under {workspace}"}
    later = [e for e in entries if isinstance(e.get("round"), int) and e["round"] > 0] or entries
    typical = sorted(later, key=lambda e: e["total"])[len(later) // 2]  # the median upload
    out: dict[str, Any] = {
        "upload_bytes_plain_measured": typical["total"],
        "upload_job_values_bytes": typical["values"],
        "upload_bytes_plain_first_round": max((e["total"] for e in entries if e.get("round") == 0), default=None),
        "upload_breakdown": {k: typical[k] for k in ("values", "data_encoding", "meta", "headers", "envelope")},
        "upload_fields": typical["fields"],
        "upload_results_audited": len(entries),
    }
    if 256 <= typical["values"] < 65536 and 256 <= values_bytes < 65536:
        out["upload_bytes_plain"] = typical["total"] - typical["values"] + values_bytes
        out["upload_bytes_plain_bound"] = None  # the size as sent: no longer a bound
        out["upload_plain_how"] = (
            "measured: FOBS size of the train result each site sent in the 10-site simulator run (after FLARE added "
            "its headers and peer context; arrays inline), rounds after the first (the first also carries the run's "
            f"descriptions), with the job's {typical['values']:,} B of values replaced by ViT-B/16's {values_bytes:,}"
        )
    return out

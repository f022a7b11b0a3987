"""Issue 5: the upload audit (real FOBS sizes, field by field), the lean round record, the scaling study's parts,
and (slow) the audited FLARE simulator job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedrsclip.features import FeatureSet
from fedrsclip.flare.upload_audit import account, serialized_size
from fedrsclip.tools.bench import scaling
from fedrsclip.tools.bench.cli import add_bench_command
from fedrsclip.tools.bench.overhead import bench_flare_overhead, realistic_overhead
from fedrsclip.tools.bench.upload import upload_from_audits


def _update(values: int, record: dict | None = None):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 105, MetaKey.INITIAL_METRICS: {"accuracy": 12.5, "loss": 2.3}}
    if record is not None:
        meta["fedrsclip"] = record
    dxo = DXO(DataKind.WEIGHTS, data={"shared_ctx": np.ones((4, values // 4), np.float32)}, meta=meta)
    shareable = dxo.to_shareable()
    shareable.set_header("__task_id__", "0f5c8a52-60f4-4ad4-9d0c-6b6c5b3e6f10")
    return shareable


def test_account_marginal_sizes_are_exact():
    record = {"round": 2, "seconds": 0.61, "metrics": {"train_loss": 2.1, "steps": 4}, "backbone": "x" * 40}
    shareable = _update(2048, record)
    out = account(shareable, "fedrsclip")
    assert out["total"] == serialized_size(shareable)
    assert out["values"] == 8192
    # removing a field saves exactly its marginal size
    del shareable["DXO"]["meta"]["fedrsclip"]["backbone"]
    assert serialized_size(shareable) == out["total"] - out["fields"]["record:backbone"]
    assert out["fields"]["record:backbone"] > 40
    assert out["fields"]["header:__task_id__"] > 36
    # the numpy encoding (npy header, FOBS type tags) costs the same for any array size of one msgpack class
    assert 128 < out["data_encoding"] < 400
    parts = out["values"] + out["data_encoding"] + out["meta"] + out["headers"] + out["envelope"]
    assert parts == out["total"]


def test_swapping_the_values_is_exact_within_one_length_class():
    """upload_from_audits swaps the job's values for ViT-B/16's 2,048: only the array's bytes may differ."""
    small, large = serialized_size(_update(256)), serialized_size(_update(2048))
    assert large - small == (2048 - 256) * 4


def test_upload_from_audits(tmp_path):
    from fedrsclip.atomic import atomic_write_json

    def entry(rnd: int, total: int) -> dict:
        return {
            "task": "train",
            "round": rnd,
            "total": total,
            "values": 1024,
            "headers": 655,
            "data_encoding": 286,
            "meta": total - 1024 - 655 - 286 - 302,
            "envelope": 302,
            "fields": {"header:__peer_ctx__": 372},
        }

    for site, totals in (("site-1", (2763, 2589, 2589)), ("site-2", (2765, 2591, 2589))):
        atomic_write_json(
            tmp_path / site / "simulate_job" / "fedrsclip" / f"upload_audit-{site}.json",
            {"site": site, "entries": [entry(r, t) for r, t in enumerate(totals)]},
        )
    out = upload_from_audits(tmp_path)
    assert out["upload_results_audited"] == 6
    assert out["upload_bytes_plain_measured"] == 2589  # the median of the later rounds
    assert out["upload_bytes_plain_first_round"] == 2765
    assert out["upload_bytes_plain"] == 2589 - 1024 + 8192
    assert upload_from_audits(tmp_path / "none")["upload_bytes_plain_measured"] is None


def test_realistic_overhead():
    flare = {"flare_overhead_s_per_round": 0.5, "flare_overhead_fraction": 0.4, "flare_sites": 10}
    out = realistic_overhead(flare, 4.5)
    assert out["flare_overhead_fraction"] == pytest.approx(0.1)
    assert out["flare_overhead_fraction_demo_job"] == 0.4 and "0.50 s" in out["flare_overhead_how"]
    assert realistic_overhead({"flare_overhead_s_per_round": None}, 4.5) == {}


def _features(n: int = 5) -> FeatureSet:
    gen = torch.Generator().manual_seed(0)
    return FeatureSet(
        torch.randn(n, 64, generator=gen).half(),
        torch.randn(n, 64, 64, generator=gen).half(),
        torch.arange(n),
        [f"img{i}.png" for i in range(n)],
    )


def test_tile_features():
    tiled = scaling.tile_features(_features(5), 12, 3)
    assert len(tiled) == 12 and tiled.paths[5] == "img0.png"
    assert torch.equal(tiled.global_feats[7], tiled.global_feats[2])
    assert tiled.labels.tolist() == [i % 3 for i in range(12)]


def test_site_threads():
    assert scaling.site_threads(40, None) == 40
    assert scaling.site_threads(10, 64_000) == 10
    assert scaling.site_threads(40, 10_000) == int(0.8 * 10_000 // scaling.SITE_PROCESS_MB) - 1
    assert scaling.site_threads(40, 100) == 1


def test_time_site_round_on_the_tiny_clip(tiny_backbone):
    out = scaling.time_site_round(tiny_backbone, _features(8), 21, 40, test_images=16, rounds=1, arch="fedrsclip-tiny")
    assert out["steps"] == 2 and out["train_images"] == 40 and out["test_images"] == 16
    assert out["round_s"] == pytest.approx(out["evaluate_s"] + out["train_s"], rel=1e-6)
    assert out["train_s"] > 0 and out["evaluate_s"] > 0


def test_plot_and_table(tmp_path):
    row = {"steps": 4, "round_s": 2.0, "train_s": 1.5, "evaluate_s": 0.5, "train_images": 105, "test_images": 105}
    results = {
        "arch": "ViT-B-16 (random weights)",
        "device": "cpu",
        "wall_s": 1.0,
        "classes": [{**row, "classes": k} for k in (21, 45)],
        "images": [{**row, "classes": 21, "train_images": n} for n in (26, 105)],
        "sites": [
            {
                "sites": n,
                "threads": n,
                "flare_round_wall_s": 1.0 + n / 10,
                "flare_site_seconds_max": 0.6,
                "flare_overhead_s_per_round": 0.4,
            }
            for n in (2, 5)
        ]
        + [{"sites": 40, "threads": 8, "flare_round_wall_s": None, "flare_overhead_note": "failed"}],
    }
    path = scaling.plot_scaling(results, tmp_path / "scaling.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 800
    table = scaling.format_scaling(results)
    assert "K= 45" in table and "n/a: failed" in table


def test_scaling_never_overwrites_files_it_did_not_write(tmp_path):
    """--out-dir may be new or an earlier study's; a foreign scaling.json or scaling.png is refused before the
    study starts, and kept."""
    for name in ("scaling.json", "scaling.png"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text("mine")
        with pytest.raises(ValueError, match=f"holds a {name} that is not an earlier scaling study's"):
            scaling.run_scaling(folder)
        assert (folder / name).read_text() == "mine"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "scaling.json").write_text(json.dumps({"classes": [], "images": [], "sites": [], "wall_s": 1.0}))
    (earlier / "scaling.png").write_bytes(b"an earlier figure")
    scaling.check_scaling_out(earlier)  # an earlier study: replaced
    scaling.check_scaling_out(tmp_path / "new")


def test_scaling_option():
    import argparse

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--scaling", "--out-dir", "x"])
    assert args.scaling and args.out_dir == "x"


@pytest.mark.slow
def test_audited_simulator_job(tmp_path):
    """The FLARE job in the real simulator (2 sites, 2 rounds): every train result is audited, FLARE's own headers
    are in it, and the round record carries the run's descriptions only with a site's first upload."""
    out = bench_flare_overhead(2, 2, tmp_path)
    assert out["flare_exit_code"] == 0, out
    assert out["flare_overhead_s_per_round"] is not None and out["flare_round_wall_s"] > 0
    assert out["upload_results_audited"] == 4
    fields = out["upload_fields"]
    assert "header:__peer_ctx__" in fields and "data:shared_ctx" in fields
    assert not {"record:site", "record:task", "record:num_rounds", "record:backbone"} & set(fields)
    assert out["upload_bytes_plain_first_round"] > out["upload_bytes_plain_measured"]
    assert out["upload_bytes_plain"] == out["upload_bytes_plain_measured"] - out["upload_job_values_bytes"] + 8192
    results = json.loads((tmp_path / "flare-ws/server/simulate_job/app_server/fedrsclip_results.json").read_text())
    assert results["algorithm"] == "fedrsclip" and "RANDOM" in results["backbone"]  # sent once, still collected
    assert all(site["bytes_up"] == 1024 for rnd in results["rounds"] for site in rnd["sites"].values())

"""The benchmark's table on stdout."""

from __future__ import annotations

import os
from typing import Any


def _fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}}{suffix}"


def format_table(r: dict) -> str:
    lines = [
        f"fedrsclip bench{' --quick' if r['quick'] else ''}: {r['arch']} on {r['device']}, "
        f"{r['torch_threads']} torch threads; images: {r['images']['source']}",
        "",
    ]
    rows = [
        (
            "training step K=21: reference / project",
            f"{_fmt(r['step_ms_reference_k21'], '.0f')} / {_fmt(r['step_ms_project_k21'], '.0f')} ms",
            _fmt(r["step_speedup_k21"], ".1f", "x"),
        ),
        (
            "training step K=45: reference / project",
            f"{_fmt(r['step_ms_reference_k45'], '.0f')} / {_fmt(r['step_ms_project_k45'], '.0f')} ms",
            _fmt(r["step_speedup_k45"], ".1f", "x")
            if r["step_speedup_k45"] is not None
            else r.get("step_k45_note", ""),
        ),
        (
            "same loss on both paths (max |diff|)",
            _fmt(r["loss_max_abs_diff"], ".2e"),
            "PASS" if r["loss_equal"] else "MISS (> 1e-4)",
        ),
        (
            "feature extraction: project / raw open_clip",
            f"{_fmt(r['feature_images_per_s_project'])} / {_fmt(r['feature_images_per_s_raw'])} img/s",
            _fmt(r["feature_throughput_ratio"], ".2f", "x"),
        ),
        (
            "upload, plaintext: values / bare DXO / as sent",
            f"{r['upload_bytes_payload_nbytes']:,} / "
            f"{_fmt(r['upload_bytes_plain_serialized'], ',')} / "
            f"{_fmt(r['upload_bytes_plain'] if 'upload_bytes_plain_measured' in r else None, ',')} B",
            f"{r['payload_values']:,} values"
            + (
                "; as sent: " + ", ".join(f"{k} {v:,}" for k, v in r["upload_breakdown"].items())
                if r.get("upload_breakdown")
                else ""
            ),
        ),
        (
            "upload, CKKS (this project) / FLARE stock HE",
            f"{_fmt(r['upload_bytes_ckks'], ',')} / {_fmt(r['upload_bytes_ckks_stock_flare'], ',')} B",
            "",
        ),
        (
            "upload, full model (ViT-Tiny, 21 classes)",
            f"{r['upload_bytes_full_model']:,} B",
            f"{r['full_model_values']:,} values",
        ),
        ("peak RSS of one site process (CPU)", f"{_fmt(r['peak_rss_mb'], '.0f')} MB", ""),
        (
            "task start, warm cache: demo / ViT-B/16",
            f"{_fmt(r.get('task_start_s_demo'), '.2f')} / {_fmt(r.get('task_start_s_vitb16'), '.2f')} s",
            "process start to the first training step",
        ),
        (
            "ViT-B/16 site peak RSS: extract / train",
            f"{_fmt(r.get('site_peak_rss_mb_extract_vitb16'), ',.0f')} / "
            f"{_fmt(r.get('site_peak_rss_mb_train_vitb16'), ',.0f')} MB",
            "cold start / warm start and one round",
        ),
        (
            "demo job in the simulator: -t 1 / -t N",
            f"{_fmt(r.get('sim_demo_t1_s'), '.0f')} / {_fmt(r.get('sim_demo_tn_s'), '.0f')} s",
            _fmt(r.get("sim_demo_ratio"), ".2f", "x")
            if r.get("sim_demo_ratio") is not None
            else r.get("sim_demo_note", ""),
        ),
        (
            "-t 1: demo job / FLARE's numpy job (floor)",
            f"{_fmt(r.get('sim_demo_t1_s'), '.0f')} / {_fmt(r.get('sim_floor_t1_s'), '.0f')} s",
            f"{_fmt(r.get('sim_demo_t1_over_floor'), '.2f', 'x')}; the floor alone is "
            f"{_fmt(r.get('sim_floor_ratio'), '.2f', 'x')} the demo job's -t N"
            if r.get("sim_demo_t1_over_floor") is not None
            else "n/a",
        ),
        (
            "one ViT-B/16 site's round (evaluate + train)",
            f"{_fmt(r.get('site_round_s'), '.2f')} s",
            f"K=21, {r['site_round']['train_images']} train + {r['site_round']['test_images']} test images, "
            f"{r['site_round']['steps']} steps"
            if r.get("site_round")
            else "",
        ),
        (
            "FLARE overhead (share of a real site's round)",
            _fmt(r["flare_overhead_fraction"], ".1%"),
            f"FLARE {_fmt(r.get('flare_overhead_s_per_round'), '.2f')} s a round ({r.get('flare_sites')} sites, "
            f"{r.get('flare_model')}; that job's own share: {_fmt(r.get('flare_overhead_fraction_demo_job'), '.1%')})"
            if r["flare_overhead_fraction"] is not None
            else r.get("flare_overhead_note", ""),
        ),
    ]
    width = max(len(a) for a, _, _ in rows)
    lines += [f"  {a:<{width}}  {b:<26} {c}" for a, b, c in rows]
    lines += ["", "targets:", *format_targets(r["targets"])]
    lines.append(f"\nwall time {r['wall_s']:.0f} s")
    loads = [x for x in (r.get("load_average_start"), r.get("load_average_end")) if x]
    if r.get("device_type") == "cpu" and loads and max(x[0] for x in loads) > (os.cpu_count() or 1):
        lines.append(
            f"warning: the machine was busy with other work (1-minute load average up to "
            f"{max(x[0] for x in loads):.1f} on {os.cpu_count()} cores): CPU timings are noisy"
        )
    return "\n".join(lines)


def format_targets(rows: dict) -> list[str]:
    """One line per target (`run.target_rows`): verdict, value, target, and what the value is when only a bound."""
    lines = []
    for name, row in rows.items():
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[row["pass"]]
        value = row["value"]
        shown = "n/a" if value is None else f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(f"  {verdict}  {name:<20} {shown:>12}   target {row['target']}{note}")
    return lines

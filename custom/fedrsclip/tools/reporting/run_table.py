"""The per-round, per-site accuracy table of one run's results file (either runner: fedrsclip.results_file); for
multi-label scenes the micro F1 table, then the final model's micro F1, macro F1 and mAP per site, overall, and on
one modality only (multi-modal federations: the missing-modality rows)."""

from __future__ import annotations

import re
from typing import Any, Mapping

from ...data.composite import MODALITIES
from ...protocol import MULTILABEL_KEYS, site_order
from ...results_file import best_value
from .cells import number

CAVEAT = "synthetic data, RANDOM-weight CLIP — not meaningful accuracy"

# what a header says of a field the sites send with their first upload, when none arrived (e.g. a failed run)
UNRECORDED = "not recorded (no site reported)"


NO_TEST = "none"  # the cell of a site without test images: nothing to measure (not a failure)
# what each kind of empty cell means, in the legend's order
LEGEND = {
    "miss": "miss: no result from the site in that round",
    NO_TEST: f"{NO_TEST}: the site has no test images (nothing to measure; not a failure)",
    "?": "?: not measured (the site's next task failed)",
}
MULTILABEL_TRAINING = ("train_bce", "train_asl")  # the training metrics only a multi-label site reports


def _cell(record: Mapping[str, Any] | None, metric: str = "accuracy") -> str:
    if not record:
        return "-"
    if record.get("missing"):
        return "miss"
    acc = number(record.get(metric))
    if acc is not None:
        return f"{acc:.1f}"
    return NO_TEST if record.get("samples") == 0 else "?"


def is_multi_label(results: Mapping[str, Any]) -> bool:
    """True when the run is multi-label (micro F1, macro F1, mAP instead of accuracy): an evaluation says so, or,
    where no site had test images to evaluate, a site's multi-label training loss."""
    entries = [
        *((results.get("initial") or {}).get("sites") or {}).values(),
        *((results.get("final") or {}).get("sites") or {}).values(),
        *(v for r in results.get("rounds", []) for v in (r.get("sites") or {}).values()),
    ]
    return any(
        isinstance(e, Mapping) and (number(e.get("micro_f1")) is not None or any(k in e for k in MULTILABEL_TRAINING))
        for e in entries
    )


def _pct(value: Any) -> str:
    value = number(value)
    return "-" if value is None else f"{value:.1f}"


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "-"


def multilabel_lines(results: Mapping[str, Any]) -> list[str]:
    """The final model's micro F1, macro F1 and mAP: per site, overall (test-sample weighted), pooled (in-process:
    every site's predictions together), and per modality alone."""
    final = results.get("final") or {}
    rows = [(s, v) for s, v in (final.get("sites") or {}).items() if not v.get("missing")]
    rows.append(
        (
            "overall (weighted)",
            {k: final.get(f"weighted_{k}") for k in MULTILABEL_KEYS}
            | {"samples": sum(v.get("samples") or 0 for _, v in rows)},
        )
    )
    if results.get("pooled"):
        rows.append(("pooled (in-process)", results["pooled"]))
    for modality, block in sorted((final.get("modalities") or {}).items(), key=lambda item: _modality_order(item[0])):
        rows.append(
            (
                f"{modality} only",
                {k: block.get(f"weighted_{k}") for k in MULTILABEL_KEYS}
                | {"samples": sum(v.get("samples") or 0 for v in (block.get("sites") or {}).values())},
            )
        )
    header = ["final model", "micro F1", "macro F1", "mAP", "test images"]
    body = [[name, *(_pct(v.get(k)) for k in MULTILABEL_KEYS), _count(v.get("samples"))] for name, v in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [
        "",
        "the final global model, multi-label (%; a class is predicted where its sigmoid >= 0.5):",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in body),
    ]
    if final.get("modalities"):
        out.append(
            "<m> only: every site holding m scored on its test scenes of m alone (the missing-modality evaluation)"
        )
    return out


def _modality_order(modality: str) -> tuple[int, str]:
    """The modality rows in one order whatever order the sites reported in: the composites' (s2, then s1)."""
    known = list(MODALITIES)
    return (known.index(modality), "") if modality in known else (len(known), modality)


_OLD_RANDOM = re.compile(r"^\S+ with RANDOM weights \(seed \d+\)")  # what load_backbone wrote before `weights`
# what describe_data writes for data.source: synthetic (or synthetic-mm)
_OLD_SYNTHETIC = re.compile(r"^SYNTHETIC (multi-modal multi-label )?scenes \(")


def is_random(results: Mapping[str, Any]) -> bool:
    """The run's CLIP had random weights: as recorded (`weights`, from how they were loaded), or for a results
    file from before that field, the exact description `load_backbone` writes for model.random_init."""
    if "weights" in results:
        return results["weights"] == "random"
    return bool(_OLD_RANDOM.match(str(results.get("backbone", ""))))


def is_synthetic(results: Mapping[str, Any]) -> bool:
    """The run's data was generated (data.source: synthetic or synthetic-mm), as recorded, or as `describe_data`
    words it."""
    if "data_source" in results:
        return results["data_source"] in ("synthetic", "synthetic-mm")
    return bool(_OLD_SYNTHETIC.match(str(results.get("data", ""))))


def caveat(results: Mapping[str, Any]) -> str | None:
    """The warning a run on synthetic data and/or a random-weight CLIP needs, or None. From what the run
    recorded about its weights and data, never from a file's name."""
    synthetic, random = is_synthetic(results), is_random(results)
    if synthetic and random:
        return CAVEAT
    if synthetic:
        return "synthetic data — not meaningful accuracy"
    if random:
        return "RANDOM-weight CLIP — not meaningful accuracy"
    return None


SETUP_PHASES = ("start", "load", "extract", "setup")  # before a process's first round ("setup": older files)


def timing_lines(rounds: list[Mapping[str, Any]]) -> list[str]:
    """Seconds at the slowest site of each round, by phase (`protocol.TIMINGS`): each round where a site process
    started (start, load, extract) on its own line, the other rounds as a range."""
    slowest = []
    for record in rounds:
        timed = [v for v in record.get("sites", {}).values() if not v.get("missing") and number(v.get("seconds"))]
        if timed:
            site = max(timed, key=lambda v: v["seconds"])
            slowest.append((record.get("round"), site["seconds"], site.get("timings") or {}))
    if not slowest:
        return []
    out = [
        "seconds at the slowest site of each round, by phase (start: process start to first task; load: "
        "weights and state; extract: image features):"
    ]
    plain = []
    for rnd, seconds, timings in slowest:
        if any(k in timings for k in SETUP_PHASES):
            parts = " + ".join(f"{k} {v:.1f}" for k, v in timings.items() if number(v) is not None)
            out.append(f"  in round {rnd}: {seconds:.1f} = {parts}")
        else:
            plain.append((rnd, seconds))
    if plain:
        low, high = min(s for _, s in plain), max(s for _, s in plain)
        other = " other" if len(plain) < len(slowest) else ""
        rounds_text = f"in round {plain[0][0]}" if len(plain) == 1 else f"the{other} {len(plain)} rounds"
        out.append(
            f"  {rounds_text}: {low:.1f}" + (f" to {high:.1f}" if high - low >= 0.05 else "") + " (evaluate + train)"
        )
    return out


def format_table(results: Mapping[str, Any]) -> str:
    """Accuracy (%) per round (rows) and site (columns), with the mean and the test-sample-weighted mean.

    Row `r` is the global model after round r, evaluated on each site's own test split with that site's private
    prompt; `init` is the starting model. "miss" marks a site with no training result in that round.
    """
    rounds = results.get("rounds", [])
    sites = list(results.get("sites") or sorted({s for r in rounds for s in r.get("sites", {})}, key=site_order))
    multi = is_multi_label(results)
    metric = "micro_f1" if multi else "accuracy"
    rows: list[tuple[str, list[str], float | None, float | None]] = []
    initial = results.get("initial") or {}
    if initial.get("sites"):
        rows.append(
            (
                "init",
                [_cell(initial["sites"].get(s), metric) for s in sites],
                number(initial.get(f"mean_{metric}")),
                number(initial.get(f"weighted_{metric}")),
            )
        )
    for record in rounds:
        rows.append(
            (
                str(record.get("round")),
                [_cell(record.get("sites", {}).get(s), metric) for s in sites],
                number(record.get(f"mean_{metric}")),
                number(record.get(f"weighted_{metric}")),
            )
        )
    header = ["round", *sites, "mean", "weighted"]
    body = [
        [name, *cells, "-" if m is None else f"{m:.1f}", "-" if w is None else f"{w:.1f}"] for name, cells, m, w in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    where = "in-process" if results.get("runner") == "in-process" else "on FLARE"
    numbers = [r["round"] for r in rounds if isinstance(r.get("round"), int)]
    # rounds trained in this run (a resumed run's first row is the resumed model's evaluation, trained before)
    trained = [
        r["round"]
        for r in rounds
        if isinstance(r.get("round"), int)
        and any("samples_train" in v or v.get("missing") for v in r.get("sites", {}).values())
    ] or numbers
    last, first = (max(numbers), min(trained)) if numbers else (0, 1)
    resumed = f" (rounds {first}-{last} in this run, resumed after round {first - 1})" if first > 1 else ""
    title = (
        f"FedRSCLIP {where}: {results.get('algorithm') or UNRECORDED}, {len(sites)} sites, "
        f"{last}/{results.get('num_rounds') or last} rounds{resumed}, status {results.get('status') or 'not recorded'}"
    )
    out = []
    note = caveat(results)
    if note:
        out.append(f"*** {note} ***")
    out += [title]
    for key in ("backbone", "data"):
        if results.get(key):
            out.append(f"{key}: {results[key]}")
    what = "micro F1 (%, multi-label scenes)" if multi else "accuracy (%)"
    out += [
        f"{what} of the global model after each round on each site's own test split (dual-prompt "
        "algorithms: with the site's private prompt)",
        line(header),
        line(["-" * w for w in widths]),
        *(line(r) for r in body),
    ]
    cells = {c for _, row, _, _ in rows for c in row}
    if cells & set(LEGEND):
        out.append("; ".join(text for cell, text in LEGEND.items() if cell in cells))
    if multi:
        out += multilabel_lines(results)
    best, chosen = results.get("best"), best_value(results.get("best"))
    if isinstance(best, Mapping) and chosen is not None:
        name = "accuracy" if chosen[0] == "accuracy" else "micro F1"
        out.append(
            f"best: after round {best.get('round')}, weighted {name} {chosen[1]:.1f}% (sites weighted by their "
            "training images, as the model selector weights them; the table's 'weighted' column weights by test "
            f"images; {best.get('selected_by', '')})"
        )
    zero_shot = results.get("zero_shot")
    if isinstance(zero_shot, Mapping) and number(zero_shot.get("accuracy")) is not None:
        prompt = str(zero_shot.get("prompt") or "").replace("{}", "{class}")
        out.append(
            f'zero-shot CLIP ("{prompt}", no training): {zero_shot["accuracy"]:.1f}% on '
            f"{zero_shot.get('samples')} test images of all sites"
            + (f" (chance {zero_shot['chance']:.1f}%)" if number(zero_shot.get("chance")) else "")
        )
        if zero_shot.get("warning"):
            out.append(f"warning: {zero_shot['warning']}")
    elif isinstance(zero_shot, Mapping) and number(zero_shot.get("mAP")) is not None:  # multi-label: no threshold
        prompt = str(zero_shot.get("prompt") or "").replace("{}", "{class}")
        out.append(
            f'zero-shot CLIP ("{prompt}", no training): mAP {zero_shot["mAP"]:.1f}% on '
            f"{zero_shot.get('samples')} test scenes of all sites"
        )
    out += timing_lines(rounds)
    out += _data_notes(rounds, results.get("warnings") or [])
    bytes_up = [
        v.get("bytes_up") for r in rounds for v in r.get("sites", {}).values() if isinstance(v.get("bytes_up"), int)
    ]
    plain = [
        v.get("bytes_up_plain")
        for r in rounds
        for v in r.get("sites", {}).values()
        if isinstance(v.get("bytes_up_plain"), int)
    ]
    if bytes_up:
        low, high = min(bytes_up), max(bytes_up)
        out.append(
            "sent per site and round: "
            + (f"{high:,} bytes up" if low == high else f"{low:,} to {high:,} bytes up (by site)")
            + (f" (CKKS ciphertext of {max(plain):,} bytes of values)" if plain else "")
        )
    for warning in results.get("warnings") or []:
        out.append(f"warning: {warning.get('message')}")
    errors = results.get("errors") or []
    if errors:
        out.append(f"{len(errors)} failed task(s):")
        for err in errors[:20]:
            where = f"round {err['round']} " if err.get("round") else ""
            out.append(f"  {where}{err.get('site')} [{err.get('kind')}]: {err.get('error')}")
        if len(errors) > 20:
            out.append(f"  ... and {len(errors) - 20} more in the results file")
    if note:
        out.append(f"*** {note} ***")
    return "\n".join(out)


def _data_notes(rounds: list, warnings: list) -> list[str]:
    """Unreadable files per site, and MIM asked for but active at no site, from the sites' round entries."""
    entries = [(s, v) for r in rounds for s, v in (r.get("sites") or {}).items()]
    out = []
    skipped = {s: v["skipped_images"] for s, v in entries if isinstance(v.get("skipped_images"), int)}
    if skipped:
        out.append(
            "unreadable images skipped (the files and why are in each site's log): "
            + ", ".join(f"{s} {n}" for s, n in sorted(skipped.items(), key=lambda x: site_order(x[0])))
        )
    mim = {s: v.get("mim_steps") for s, v in entries if "mim_steps" in v}
    active = {s for s, v in entries if v.get("mim_steps")}
    if mim and not active and not any(w.get("kind") == "mim_inactive" for w in warnings):
        out.append(f"MIM (multimodal.mim) was inactive at every site: {_mim_reason(entries)}")
    return out


def _mim_reason(entries: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Why MIM was active in no step, as far as the round entries tell: InfoNCE needs a site holding paired
    modalities with at least 2 paired scenes in a training batch (the in-process runner says separately, as a
    `mim_inactive` warning, when no site holds paired modalities)."""
    train = {}
    for site, v in entries:
        if isinstance(v.get("samples_train"), int):
            train[site] = max(train.get(site, 0), v["samples_train"])
    few = sorted((s for s, n in train.items() if n < 2), key=site_order)
    need = "it needs a site holding paired modalities (e.g. s2+s1) with at least 2 paired training scenes in a batch"
    if train and len(few) == len(train):
        return f"{need}, and every site has fewer than 2 training scenes ({', '.join(few)})"
    return f"{need} (each site's log says why it was inactive)"

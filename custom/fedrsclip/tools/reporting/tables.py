"""The accuracy tables of an experiment, laid out like the paper's Tables II-VII: one row per algorithm (baselines,
FedRSCLIP, references) or ablation, one column per setting (centralized, then the site counts), mean +- std over
seeds, and the parameters each site transmits per round, computed from the payload bytes the results record."""

from __future__ import annotations

import statistics
from typing import Iterable, Sequence

from ...zeroshot import chance_warning, pool
from .cells import Record, columns, final_accuracy, number, select

# Row order and labels of the paper's tables; anything else follows under its own name.
COMPARISON = ["fedavg-full", "fedavg-pl", "fedprox", "fedotp", "fedrsclip", "local"]
ABLATIONS = ["fedrsclip-spm", "fedrsclip-no-dpac", "fedrsclip-no-cmfac", "fedrsclip-uniform-plan", "fedrsclip"]
LABELS = {
    "fedavg-full": "FedAvg (full model)",
    "fedavg-pl": "FedAvg-PL",
    "fedprox": "FedProx",
    "fedotp": "FedOTP",
    "fedrsclip": "FedRSCLIP",
    "local": "local only (no federation)",
    "fedrsclip-spm": "FedRSCLIP w/ SPM",
    "fedrsclip-no-dpac": "FedRSCLIP w/o DPAC",
    "fedrsclip-no-cmfac": "FedRSCLIP w/o CMFAC",
    "fedrsclip-uniform-plan": "FedRSCLIP, uniform plan (no OT)",
}
ZERO_SHOT = "zero-shot CLIP"
FLOAT32_BYTES = 4
TRANSMITTED_HEADER = "transmitted parameters (values per site per round = bytes_up / 4, float32)"


def mean_std(values: Sequence[float]) -> str:
    """ "93.4 ± 0.5" over seeds (sample std); one value alone; "-" for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def transmitted_values(records: Iterable[Record]) -> int | None:
    """The most values one site sent in one round, from the plaintext payload's size measured at the site: under
    CKKS `bytes_up` is the ciphertext on the wire and `bytes_up_plain` the values it encrypts."""
    sizes = [
        number(site.get("bytes_up_plain", site.get("bytes_up")))
        for r in records
        for rnd in (r.get("results") or {}).get("rounds", [])
        for site in rnd.get("sites", {}).values()
    ]
    sizes = [s for s in sizes if s is not None]
    return int(max(sizes) // FLOAT32_BYTES) if sizes else None


def format_count(values: int | None) -> str:
    """2048 -> "2,048 (2 K)", 5_700_000 -> "5,700,000 (5.7 M)", as the paper's last column; 0 -> "0 (nothing)"."""
    if values is None:
        return "-"
    if values == 0:
        return "0 (nothing)"
    short = f"{values / 1e6:.1f} M" if values >= 1e6 else f"{values / 1e3:.0f} K" if values >= 1e3 else str(values)
    return f"{values:,}" if short == str(values) else f"{values:,} ({short})"


def zero_shot(records: Iterable[Record]) -> dict | None:
    """Zero-shot CLIP on the test splits of one column's cells, pooled over sites (`zeroshot.pool`: accuracy
    test-sample weighted, chance): the same backbone and data for every algorithm and seed of a column, so any
    prompt cell of it gives it. None when no cell has one."""
    for record in records:
        sites = [p.get("zero_shot") for p in (record.get("site_predictions") or {}).values()]
        pooled = pool(
            [z for z in sites if isinstance(z, dict) and number(z.get("accuracy")) is not None and z.get("samples")]
        )
        if pooled:
            return pooled
    return None


# Multi-modal ablations (--ablate): the variants' rows, in this order.
VARIANTS = {
    "full": "MF + FW + MIM (the full framework)",
    "no-mf": "w/o MF (adapters stay at their site)",
    "no-fw": "w/o FW (no feature whitening)",
    "no-mim": "w/o MIM (no cross-modal InfoNCE)",
}


def table(
    records: Sequence[Record],
    partition: str,
    algorithms: Sequence[str],
    zero_shot_row: bool,
    metric: str = "accuracy",
    variant: str | None = None,
) -> str:
    """Markdown: rows `algorithms` (those with finished cells), columns centralized + site counts of `partition`;
    entries: the final `metric` (`cells.final_accuracy`). `variant`: only the cells of that multi-modal ablation
    variant (None: the full framework's, or cells without a variant)."""
    cells = [
        r
        for r in records
        if r["cell"]["partition"] in (partition, "pooled")
        and (r["cell"].get("variant") or "") in ((variant,) if variant is not None else ("", "full"))
    ]
    cols = columns(select(cells))
    header = [
        "model (`algorithm`)",
        *("centralized" if c == "centralized" else f"{c} sites" for c in cols),
        TRANSMITTED_HEADER,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for algorithm in algorithms:
        mine = select(cells, algorithm=algorithm)
        if not mine:
            continue
        row = [f"{LABELS.get(algorithm, algorithm)} (`{algorithm}`)"]
        for col in cols:
            values = [final_accuracy(r, metric) for r in select(mine, column=col)]
            row.append(mean_std([v for v in values if v is not None]))
        row.append(format_count(transmitted_values([r for r in mine if r["cell"]["column"] != "centralized"] or mine)))
        lines.append("| " + " | ".join(row) + " |")
    warnings = []
    if zero_shot_row:
        values = [zero_shot(select(cells, column=col)) for col in cols]
        if any(v is not None for v in values):
            lines.append(
                "| "
                + " | ".join(
                    [
                        f'{ZERO_SHOT} ("a satellite photo of {{class}}.")',
                        *("-" if v is None else f"{v['accuracy']:.1f}" for v in values),
                        "0 (no training)",
                    ]
                )
                + " |"
            )
        for col, value in zip(cols, values):  # at chance: random weights, a wrong class list or unreadable names
            warning = (
                chance_warning(
                    value,
                    "the test splits of the " + ("centralized cell" if col == "centralized" else f"{col}-site cells"),
                )
                if value
                else None
            )
            if warning:
                warnings.append(f"**Warning:** {warning}.")
    return "\n".join(lines + ([""] + warnings if warnings else []))


def variant_table(records: Sequence[Record], partition: str, algorithm: str, metric: str) -> str:
    """Markdown: one row per multi-modal ablation variant of `algorithm` (`VARIANTS`), columns its site counts."""
    cells = [
        r
        for r in select(records, algorithm=algorithm)
        if r["cell"]["partition"] == partition and r["cell"].get("variant")
    ]
    cols = columns(cells)
    header = ["variant", *(f"{c} sites" for c in cols), TRANSMITTED_HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in [*VARIANTS, *sorted({r["cell"]["variant"] for r in cells} - set(VARIANTS))]:
        mine = [r for r in cells if r["cell"]["variant"] == variant]
        if not mine:
            continue
        row = [f"{VARIANTS.get(variant, variant)} (`{variant}`)"]
        for col in cols:
            values = [final_accuracy(r, metric) for r in select(mine, column=col)]
            row.append(mean_std([v for v in values if v is not None]))
        row.append(format_count(transmitted_values(mine)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def ordered(algorithms: Iterable[str], order: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(algorithms))
    return [a for a in order if a in present] + [a for a in present if a not in order]

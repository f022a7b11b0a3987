"""`report.md` of an experiment folder: what was run (backbone, weights, data, seeds, rounds), the tables, the
figures, and the cells behind them."""

from __future__ import annotations

import re
from pathlib import Path

from ...atomic import atomic_write
from . import figures
from .cells import Record, column_key, load_experiment, multi_label, select
from .run_table import UNRECORDED, caveat
from .tables import ABLATIONS, COMPARISON, ordered, table, variant_table

METRICS = {"accuracy": "accuracy (%)", "micro_f1": "micro F1 (%)", "mAP": "mAP (%)"}

REPORT_FILE = "report.md"
TITLE = "# FedRSCLIP experiment report"  # the first line: a report.md without it is not ours to replace


def _distinct(records: list[Record], key: str) -> list[str]:
    """The distinct values of a results entry; the site count, which varies by column, left out."""
    return sorted({re.sub(r"\b\d+ sites?, ", "", str(r["results"][key])) for r in records if r["results"].get(key)})


def _header(grid: dict, done: list[Record], records: list[Record], multi: bool = False) -> list[str]:
    notes = sorted({n for n in (caveat(r["results"]) for r in done) if n})
    seeds = sorted({r["cell"]["seed"] for r in done})
    rounds = sorted({len(r["results"].get("rounds", [])) for r in done})
    lines = [TITLE, ""]
    if notes:
        lines += [
            f"> **Not a result about FedRSCLIP: {'; '.join(notes)}.** These numbers show that the federation "
            "and the methods run; they are not comparable with the paper's tables.",
            "",
        ]
    lines += [
        f"- backbone and weights: {'; '.join(_distinct(done, 'backbone')) or UNRECORDED}",
        f"- data: {grid.get('data') or 'not given'}; "
        f"as the sites saw it: {'; '.join(_distinct(done, 'data')) or UNRECORDED}",
        f"- seeds (train.seed): {', '.join(map(str, seeds))}: each entry is the mean ± sample std over seeds "
        "(one value: one seed)",
        f"- rounds: {', '.join(map(str, rounds))}; settings for every cell: "
        f"{', '.join(f'`{o}`' for o in grid.get('overrides') or []) or 'the job defaults'}",
        (
            "- micro F1 and mAP (%; multi-label scenes, a class predicted where its sigmoid >= 0.5)"
            if multi
            else "- accuracy (%)"
        )
        + ": the final global model, evaluated by each site on its own test split (with its "
        "private prompt where the algorithm has one), weighted by test samples",
        *([f"- multi-modal federation: the sites hold {grid['modalities']}"] if grid.get("modalities") else []),
        "- centralized: the same FLARE job with one site holding all the data (every site's train and test "
        "split pooled)",
        f"- cells: {len(done)} finished of {len(records)} recorded"
        + (f" ({len(grid.get('cells', []))} in the grid)" if grid.get("cells") else ""),
        "",
    ]
    return lines


def write_report(folder: str | Path) -> Path:
    """Write `<folder>/report.md` and its PNG figures; returns the report's path."""
    folder = Path(folder)
    path = folder / REPORT_FILE
    if path.exists() and not path.read_text(encoding="utf-8", errors="replace").startswith(TITLE):
        raise ValueError(
            f"{path} exists and is not a fedrsclip report: move it away (nothing was written; the "
            "report and its figures go into the experiment folder)"
        )
    grid, records = load_experiment(folder)
    done = select(records)
    algorithms = list(dict.fromkeys([*(grid.get("algorithms") or []), *(r["cell"]["algorithm"] for r in done)]))
    partitions = [p for p in dict.fromkeys(r["cell"]["partition"] for r in done) if p != "pooled"] or ["uniform"]
    multi = multi_label(done)
    metrics = ["micro_f1", "mAP"] if multi else ["accuracy"]
    lines = _header(grid, done, records, multi)
    comparison = ordered([a for a in algorithms if a not in ABLATIONS[:-1]], COMPARISON)
    ablations = ordered([a for a in algorithms if a in ABLATIONS], ABLATIONS)
    for partition in partitions:
        suffix = "" if len(partitions) == 1 else f"-{partition}"
        lines += [f"## Partition: {partition}", ""]
        for metric in metrics:
            named = f", {METRICS[metric]}" if multi else ""
            lines += [
                f"### Comparison (layout of Tables II-IV{named})",
                "",
                table(done, partition, comparison, zero_shot_row=not multi, metric=metric),
                "",
            ]
            if len(ablations) > 1:
                lines += [
                    f"### Ablations (layout of Tables V-VII{named})",
                    "",
                    table(done, partition, ablations, False, metric=metric),
                    "",
                ]
            for algorithm in algorithms:
                if any(r["cell"].get("variant") for r in select(done, algorithm=algorithm, partition=partition)):
                    lines += [
                        f"### Multi-modal modules of `{algorithm}`, {METRICS[metric]}",
                        "",
                        variant_table(done, partition, algorithm, metric),
                        "",
                    ]
        lines += ["### Figures", ""]
        pictures = [
            figures.accuracy_per_round(
                done, algorithms, partition, folder / f"accuracy_per_round{suffix}.png", metrics[0]
            )
        ]
        federated = sorted({r["cell"]["column"] for r in select(done, partition=partition)}, key=column_key)
        if federated:
            pictures.append(
                figures.per_site_accuracy(
                    done, algorithms, federated[-1], partition, folder / f"per_site_accuracy{suffix}.png", metrics[0]
                )
            )
        # a confusion matrix and one true class per sample: single-label scenes only
        shown = None if multi else figures.showcase(done, ordered(algorithms, ["fedrsclip"]), partition)
        if shown is not None:
            pictures.append(figures.confusion_matrix(shown, folder / f"confusion_matrix{suffix}.png"))
            pictures.append(figures.prediction_grid(shown, folder / f"predictions{suffix}.png"))
        lines += [f"![{p.stem}]({p.name})" for p in pictures if p is not None] + [""]
    lines += ["## Cells", "", "| cell | status | seconds | results |", "|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r["cell"]["name"]):
        status = (r.get("results") or {}).get("status") or "no results file"
        lines.append(
            f"| {r['cell']['name']} | {status} | {r.get('seconds', 0):.0f} | {Path(r['path']).relative_to(folder)} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))
    return path

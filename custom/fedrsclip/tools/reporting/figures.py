"""The experiment's PNG figures (matplotlib, Agg): accuracy per round per algorithm, per-site accuracy, a confusion
matrix, and a prediction grid like the paper's Fig. 3 (sample test images per site with the predicted class,
mistakes in red)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt
import numpy as np

from ...protocol import site_order
from .cells import Record, column_key, columns, number, select
from .run_table import caveat
from .tables import LABELS

DPI = 110
MISTAKE = "#d62728"


def _label(algorithm: str) -> str:
    return LABELS.get(algorithm, algorithm)


def _curve(record: Record) -> list[float | None]:
    """Weighted accuracy of the initial model (round 0) and after each round."""
    results = record["results"]
    out = [number((results.get("initial") or {}).get("weighted_accuracy"))]
    return out + [number(r.get("weighted_accuracy")) for r in results.get("rounds", [])]


def accuracy_per_round(records: Sequence[Record], algorithms: Sequence[str], partition: str, path: Path) -> Path:
    """One panel per column (centralized, site counts); one line per algorithm, mean over seeds, band: min-max."""
    cells = [r for r in select(records) if r["cell"]["partition"] in (partition, "pooled")]
    cols = columns(cells)
    fig, axes = plt.subplots(1, len(cols), figsize=(max(4.2 * len(cols), 6.5), 4.4), sharey=True, squeeze=False)
    for ax, col in zip(axes[0], cols):
        for algorithm in algorithms:
            curves = [_curve(r) for r in select(cells, algorithm=algorithm, column=col)]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            x, mean, low, high = [], [], [], []
            for i in range(length):
                values = [c[i] for c in curves if i < len(c) and c[i] is not None]
                if values:
                    x.append(i)
                    mean.append(statistics.mean(values))
                    low.append(min(values))
                    high.append(max(values))
            line, = ax.plot(x, mean, marker="o", markersize=3, label=_label(algorithm))
            if len(curves) > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title("centralized (1 site)" if col == "centralized" else f"{col} sites, {partition}")
        ax.set_xlabel("round (0: initial model)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%), test-sample weighted")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle("Accuracy of the global model per round\n(each site on its own test split, test-sample weighted; "
                 "mean over seeds, band: min-max)", fontsize=10)
    rows = (len(labels) + 4) // 5
    fig.tight_layout(rect=(0, 0.05 + 0.05 * rows, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def per_site_accuracy(records: Sequence[Record], algorithms: Sequence[str], column: str, partition: str,
                      path: Path) -> Path:
    """Final accuracy of each site (mean over seeds), one bar per algorithm."""
    cells = select(records, column=column, partition=partition)
    sites = sorted({s for r in cells for s in (r["results"].get("final") or {}).get("sites", {})}, key=site_order)
    present = [a for a in algorithms if select(cells, algorithm=a)]
    width = 0.8 / max(len(present), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(sites) * max(len(present), 1) + 2), 4.0))
    x = np.arange(len(sites))
    for i, algorithm in enumerate(present):
        means = []
        for site in sites:
            values = [number(((r["results"].get("final") or {}).get("sites", {}).get(site) or {}).get("accuracy"))
                      for r in select(cells, algorithm=algorithm)]
            values = [v for v in values if v is not None]
            means.append(statistics.mean(values) if values else np.nan)
        ax.bar(x + (i - (len(present) - 1) / 2) * width, means, width, label=_label(algorithm))
    ax.set_xticks(x, sites, rotation=45 if len(sites) > 10 else 0)
    ax.set_ylabel("final accuracy (%) on the site's own test split")
    ax.set_title(f"Per-site accuracy, {column} sites, {partition} (mean over seeds)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def stamp(fig: plt.Figure, note: str | None) -> None:
    """Write `note` (the synthetic/random caveat) across the top of the figure, in the image itself: a PNG is
    shown and shared without the report around it."""
    if note:
        fig.text(0.5, 0.995, f"{note.upper()}", ha="center", va="top", fontsize=9, fontweight="bold",
                 color="white", bbox={"facecolor": MISTAKE, "edgecolor": "none", "pad": 3})


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str, path: Path,
                     note: str | None = None) -> Path:
    """A confusion matrix [true][predicted]: row-normalised colours, counts written in the cells (up to 31
    classes); `note`: a caveat stamped on the image."""
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size + (0.3 if note else 0)))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 31:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout(rect=(0, 0, 1, 0.97 if note else 1))
    stamp(fig, note)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def confusion_matrix(record: Record, path: Path) -> Path | None:
    """Summed over the cell's sites: row-normalised colours, counts written in the cells."""
    sites = [p for p in (record.get("site_predictions") or {}).values() if p.get("confusion")]
    if not sites:
        return None
    counts = np.sum([np.asarray(p["confusion"]) for p in sites], axis=0)
    cell = record["cell"]
    return confusion_figure(counts, sites[0]["classes"],
                            f"Confusion matrix: {_label(cell['algorithm'])}, {cell['column']} sites, seed "
                            f"{cell['seed']}\nsummed over {len(sites)} sites' test splits ({int(counts.sum())} "
                            "images)", path, caveat(record.get("results") or {}))


def _classes_to_show(classes: Sequence[str], limit: int) -> list[int]:
    if len(classes) <= limit:
        return list(range(len(classes)))
    return sorted({round(i) for i in np.linspace(0, len(classes) - 1, limit)})


def prediction_grid(record: Record, path: Path, max_sites: int = 10, max_classes: int = 6) -> Path | None:
    """Rows: true classes; columns: sites; each image captioned with its predicted class, mistakes framed red."""
    from PIL import Image

    predictions = record.get("site_predictions") or {}
    sites = sorted((s for s, p in predictions.items() if p.get("samples")), key=site_order)[:max_sites]
    if not sites:
        return None
    classes = predictions[sites[0]]["classes"]
    rows = _classes_to_show(classes, max_classes)
    fig, axes = plt.subplots(len(rows), len(sites), figsize=(1.55 * len(sites) + 1.3, 1.75 * len(rows) + 0.8),
                             squeeze=False)
    for j, site in enumerate(sites):
        by_class: dict[int, dict] = {}
        for sample in predictions[site]["samples"]:
            by_class.setdefault(sample["true"], sample)
        for i, cls in enumerate(rows):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            sample = by_class.get(cls)
            if i == 0:
                ax.set_title(site, fontsize=9, pad=14)
            if j == 0:
                ax.set_ylabel(classes[cls], fontsize=9, rotation=0, ha="right", va="center")
            if sample is None:
                ax.set_axis_off()
                continue
            try:
                with Image.open(sample["path"]) as image:
                    ax.imshow(np.asarray(image.convert("RGB")))
            except OSError:
                ax.text(0.5, 0.5, "image\nnot found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            wrong = sample["predicted"] != sample["true"]
            for spine in ax.spines.values():
                spine.set_edgecolor(MISTAKE if wrong else "#bbbbbb")
                spine.set_linewidth(3.5 if wrong else 0.8)
            ax.text(0.5, 1.02, classes[sample["predicted"]], transform=ax.transAxes, ha="center", va="bottom",
                    fontsize=7, color=MISTAKE if wrong else "black", fontweight="bold" if wrong else "normal")
    cell = record["cell"]
    fig.suptitle(f"Predictions of {_label(cell['algorithm'])}, {cell['column']} sites, seed {cell['seed']}\n"
                 "rows: true class; caption: predicted; red frame: mistake", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def showcase(records: Sequence[Record], algorithms: Sequence[str], partition: str) -> Record | None:
    """The cell the confusion matrix and prediction grid show: the first algorithm (FedRSCLIP when run) at the
    largest federated site count, lowest seed."""
    cells = [r for r in select(records, partition=partition) if r.get("site_predictions")]
    for algorithm in algorithms:
        mine = select(cells, algorithm=algorithm)
        if mine:
            return max(mine, key=lambda r: (column_key(r["cell"]["column"]), -r["cell"]["seed"]))
    return None

"""The experiment's PNG figures (matplotlib, Agg): accuracy per round per algorithm, per-site accuracy, a confusion
matrix, and a prediction grid like the paper's Fig. 3 (sample test images per site with the predicted class,
mistakes in red)."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt
import numpy as np

from ...protocol import site_order
from .cells import Record, column_key, columns, number, select
from .run_table import UNRECORDED, caveat, is_multi_label
from .tables import LABELS

log = logging.getLogger(__name__)

DPI = 110
MISTAKE = "#d62728"


def _label(algorithm: str) -> str:
    return LABELS.get(algorithm, algorithm)


def _note(records: Sequence[Record]) -> str | None:
    """The caveat of the runs behind a figure (each distinct one), or None."""
    notes = sorted({n for n in (caveat(r.get("results") or {}) for r in records) if n})
    return "; ".join(notes) or None


METRIC_NAMES = {"accuracy": "accuracy", "micro_f1": "micro F1"}  # multi-label runs: micro F1 in place of accuracy
TITLES = {"accuracy": "Accuracy", "micro_f1": "Micro F1"}


def _curve(record: Record, metric: str = "accuracy") -> list[float | None]:
    """Weighted accuracy (or `metric`) of the initial model (round 0) and after each round."""
    results = record["results"]
    out = [number((results.get("initial") or {}).get(f"weighted_{metric}"))]
    return out + [number(r.get(f"weighted_{metric}")) for r in results.get("rounds", [])]


def accuracy_per_round(
    records: Sequence[Record], algorithms: Sequence[str], partition: str, path: Path, metric: str = "accuracy"
) -> Path:
    """One panel per column (centralized, site counts); one line per algorithm, mean over seeds, band: min-max.
    `metric`: micro_f1 for multi-label runs."""
    cells = [r for r in select(records) if r["cell"]["partition"] in (partition, "pooled")]
    cols = columns(cells)
    fig, axes = plt.subplots(1, len(cols), figsize=(max(4.2 * len(cols), 6.5), 4.4), sharey=True, squeeze=False)
    for ax, col in zip(axes[0], cols):
        for algorithm in algorithms:
            curves = [_curve(r, metric) for r in select(cells, algorithm=algorithm, column=col)]
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
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=_label(algorithm))
            if len(curves) > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.set_title("centralized (1 site)" if col == "centralized" else f"{col} sites, {partition}")
        ax.set_xlabel("round (0: initial model)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{METRIC_NAMES[metric]} (%), test-sample weighted")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    note = _note(cells)
    fig.suptitle(
        f"{TITLES[metric]} of the global model per round\n(each site on its own test "
        "split, test-sample weighted; "
        "mean over seeds, band: min-max)",
        fontsize=10,
        y=0.95 if note else 0.98,
    )
    rows = (len(labels) + 4) // 5
    return save(fig, path, note, rect=(0, 0.05 + 0.05 * rows, 1, 0.94 if note else 1))


def per_site_accuracy(
    records: Sequence[Record],
    algorithms: Sequence[str],
    column: str,
    partition: str,
    path: Path,
    metric: str = "accuracy",
) -> Path:
    """Final accuracy (or `metric`) of each site (mean over seeds), one bar per algorithm."""
    cells = select(records, column=column, partition=partition)
    sites = sorted({s for r in cells for s in (r["results"].get("final") or {}).get("sites", {})}, key=site_order)
    present = [a for a in algorithms if select(cells, algorithm=a)]
    width = 0.8 / max(len(present), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(sites) * max(len(present), 1) + 2), 4.0))
    x = np.arange(len(sites))
    for i, algorithm in enumerate(present):
        means = []
        for site in sites:
            values = [
                number(((r["results"].get("final") or {}).get("sites", {}).get(site) or {}).get(metric))
                for r in select(cells, algorithm=algorithm)
            ]
            values = [v for v in values if v is not None]
            means.append(statistics.mean(values) if values else np.nan)
        ax.bar(x + (i - (len(present) - 1) / 2) * width, means, width, label=_label(algorithm))
    ax.set_xticks(x, sites, rotation=45 if len(sites) > 10 else 0)
    ax.set_ylabel(f"final {METRIC_NAMES[metric]} (%) on the site's own test split")
    ax.set_title(f"Per-site {METRIC_NAMES[metric]}, {column} sites, {partition} (mean over seeds)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    note = _note(cells)
    return save(fig, path, note, rect=(0, 0, 1, 0.94 if note else 1))


def save(fig: plt.Figure, path: Path, note: str | None, rect: tuple[float, float, float, float]) -> Path:
    """Lay `fig` out within `rect` (room left at the top for `note`), stamp the note, write it to `path`, close it."""
    fig.tight_layout(rect=rect)
    stamp(fig, note)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def stamp(fig: plt.Figure, note: str | None) -> None:
    """Write `note` (the synthetic/random caveat) across the top of the figure, in the image itself: a PNG is
    shown and shared without the report around it."""
    if note:
        fig.text(
            0.5,
            0.995,
            f"{note.upper()}",
            ha="center",
            va="top",
            fontsize=9,
            fontweight="bold",
            color="white",
            bbox={"facecolor": MISTAKE, "edgecolor": "none", "pad": 3},
        )


def confusion_figure(
    counts: np.ndarray,
    classes: Sequence[str],
    title: str,
    path: Path,
    note: str | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """A confusion matrix [true][predicted]: row-normalised colours, counts written in the cells (up to 31
    classes); `note`: a caveat stamped on the image; `row_labels`: the true classes' labels (default `classes`)."""
    counts = np.asarray(counts)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size + (0.3 if note else 0)))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 31:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        str(counts[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), row_labels or classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    return save(fig, path, note, rect=(0, 0, 1, 0.97 if note else 1))


def per_class_bars(
    values: Sequence[float | None], classes: Sequence[str], title: str, path: Path, note: str | None, label: str
) -> Path:
    """One horizontal bar per class (`values` in %, None: no images of that class, drawn as a gap and marked)."""
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.32 * len(classes) + 1.5 + (0.3 if note else 0))))
    y = np.arange(len(classes))
    ax.barh(y, [0.0 if v is None else v for v in values], color="#4477aa")
    for i, v in enumerate(values):
        if v is None:
            ax.text(1, i, "no images", va="center", fontsize=7, color="grey")
    ax.set_yticks(y, classes, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(label)
    ax.set_title(title, fontsize=10)
    return save(fig, path, note, rect=(0, 0, 1, 0.97 if note else 1))


def confusion_matrix(record: Record, path: Path) -> Path | None:
    """Summed over the cell's sites: row-normalised colours, counts written in the cells."""
    sites = [p for p in (record.get("site_predictions") or {}).values() if p.get("confusion")]
    if not sites:
        return None
    counts = np.sum([np.asarray(p["confusion"]) for p in sites], axis=0)
    cell = record["cell"]
    return confusion_figure(
        counts,
        sites[0]["classes"],
        f"Confusion matrix: {_label(cell['algorithm'])}, {cell['column']} sites, seed "
        f"{cell['seed']}\nsummed over {len(sites)} sites' test splits ({int(counts.sum())} "
        "images)",
        path,
        caveat(record.get("results") or {}),
    )


def _classes_to_show(classes: Sequence[str], limit: int) -> list[int]:
    if len(classes) <= limit:
        return list(range(len(classes)))
    return sorted({round(i) for i in np.linspace(0, len(classes) - 1, limit)})


def sample_image(record: Record, path: str) -> np.ndarray:
    """The picture the encoder saw of a cell's sample `path` (8-bit RGB, [H, W, 3]): `load_rgb` with the cell's
    data.* settings (composite, scaling, pixel cap) and the file's modality, as feature extraction renders it.
    Raises ImageReadError when the file cannot be read here."""
    import warnings

    from ...config import load_config
    from ...data.composite import settings_from_config
    from ...data.images import detect_modality, load_rgb

    data = [o for o in (record.get("settings") or {}).get("overrides") or [] if o.strip().startswith("data.")]
    settings = settings_from_config(load_config(overrides=data).data, detect_modality(path))
    with warnings.catch_warnings():  # near-black or saturated: extraction already said so
        warnings.simplefilter("ignore")
        return np.asarray(load_rgb(path, settings))


def prediction_grid(record: Record, path: Path, max_sites: int = 10, max_classes: int = 6) -> Path | None:
    """Rows: true classes; columns: sites; each image captioned with its predicted class, mistakes framed red.
    Each image is shown as the encoder saw it (`fedrsclip.data.images.load_rgb`: rasters, 16-bit images and
    band-per-file patches rendered with the cell's settings, the pixel cap applied)."""
    from ...data.errors import ImageReadError

    predictions = record.get("site_predictions") or {}
    sites = sorted((s for s, p in predictions.items() if p.get("samples")), key=site_order)[:max_sites]
    if not sites:
        return None
    classes = predictions[sites[0]]["classes"]
    rows = _classes_to_show(classes, max_classes)
    fig, axes = plt.subplots(
        len(rows), len(sites), figsize=(1.55 * len(sites) + 1.3, 1.75 * len(rows) + 0.8), squeeze=False
    )
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
                ax.imshow(sample_image(record, sample["path"]))
            except (ImageReadError, OSError) as exc:
                ax.text(
                    0.5, 0.5, "image not\nreadable here", ha="center", va="center", fontsize=7, transform=ax.transAxes
                )
                log.warning("prediction grid: %s", exc)
            wrong = sample["predicted"] != sample["true"]
            for spine in ax.spines.values():
                spine.set_edgecolor(MISTAKE if wrong else "#bbbbbb")
                spine.set_linewidth(3.5 if wrong else 0.8)
            ax.text(
                0.5,
                1.02,
                classes[sample["predicted"]],
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                fontsize=7,
                color=MISTAKE if wrong else "black",
                fontweight="bold" if wrong else "normal",
            )
    cell = record["cell"]
    note = caveat(record.get("results") or {})
    fig.suptitle(
        f"Predictions of {_label(cell['algorithm'])}, {cell['column']} sites, seed {cell['seed']}\n"
        "rows: true class; caption: predicted; red frame: mistake",
        fontsize=8,
        y=0.97 if note else 0.98,
    )
    return save(fig, path, note, rect=(0, 0, 1, 1 - (0.75 if note else 0.45) / fig.get_figheight()))


def showcase(records: Sequence[Record], algorithms: Sequence[str], partition: str) -> Record | None:
    """The cell the confusion matrix and prediction grid show: the first algorithm (FedRSCLIP when run) at the
    largest federated site count, lowest seed."""
    cells = [r for r in select(records, partition=partition) if r.get("site_predictions")]
    for algorithm in algorithms:
        mine = select(cells, algorithm=algorithm)
        if mine:
            return max(mine, key=lambda r: (column_key(r["cell"]["column"]), -r["cell"]["seed"]))
    return None


# ---- one run (fedrsclip report WORKSPACE) ----------------------------------------------------------------------------
def _run_title(results: dict) -> str:
    where = "in-process" if results.get("runner") == "in-process" else "FLARE"
    return (
        f"{_label(str(results.get('algorithm') or UNRECORDED))} ({where}), {len(results.get('sites') or [])} sites; "
        f"{results.get('backbone') or UNRECORDED}"
    )


def run_accuracy_per_round(results: dict, path: Path) -> Path | None:
    """Accuracy (micro F1 for multi-label scenes) per round of one run: each site (thin lines), the mean and the
    test-sample-weighted mean (thick); round 0 is the initial model. None when no round has one."""
    metric = "micro_f1" if is_multi_label(results) else "accuracy"
    name = METRIC_NAMES[metric]
    rounds = results.get("rounds") or []
    sites = list(results.get("sites") or sorted({s for r in rounds for s in r.get("sites", {})}, key=site_order))
    points = [(0, results.get("initial") or {})] + [(r.get("round"), r) for r in rounds]
    if not any(number(p.get(f"weighted_{metric}")) is not None for _, p in points):
        return None
    note = caveat(results)
    fig, ax = plt.subplots(figsize=(7.5, 4.6 + (0.3 if note else 0)))
    for site in sites:
        xs = [x for x, p in points if number(((p.get("sites") or {}).get(site) or {}).get(metric)) is not None]
        ys = [number(((p.get("sites") or {}).get(site) or {}).get(metric)) for x, p in points if x in xs]
        ax.plot(xs, ys, color="#999999", linewidth=0.8, alpha=0.6)
    for key, label, style in (
        (f"mean_{metric}", "mean over sites", "--"),
        (f"weighted_{metric}", "test-sample weighted", "-"),
    ):
        xs = [x for x, p in points if number(p.get(key)) is not None]
        ax.plot(
            xs,
            [number(p[key]) for x, p in points if x in xs],
            style,
            marker="o",
            markersize=4,
            linewidth=2,
            label=label,
        )
    ax.plot([], [], color="#999999", linewidth=0.8, label="each site")
    zero_shot = number((results.get("zero_shot") or {}).get("accuracy"))
    if zero_shot is not None:
        ax.axhline(zero_shot, color="#2ca02c", linestyle=":", label=f"zero-shot CLIP ({zero_shot:.1f}%)")
    ax.set_xlabel("round (0: initial model)")
    ax.set_ylabel(f"{name} (%) on each site's own test split")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{TITLES[metric]} of the global model per round\n{_run_title(results)}", fontsize=9)
    return save(fig, path, note, rect=(0, 0, 1, 0.95 if note else 1))


def run_per_site_accuracy(results: dict, path: Path) -> Path | None:
    """Each site's accuracy (micro F1 for multi-label scenes) of the initial and of the final global model (with its
    private prompt where the algorithm has one), on its own test split, with its test-image count. None when there
    is no final value."""
    metric = "micro_f1" if is_multi_label(results) else "accuracy"
    rounds = results.get("rounds") or []
    final = (results.get("final") or {}).get("sites") or (rounds[-1].get("sites") if rounds else {}) or {}
    initial = (results.get("initial") or {}).get("sites") or {}
    sites = [
        s
        for s in (results.get("sites") or sorted(final, key=site_order))
        if number((final.get(s) or {}).get(metric)) is not None
    ]
    if not sites:
        return None
    note = caveat(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(sites) + 2.5), 4.4 + (0.3 if note else 0)))
    x = np.arange(len(sites))
    before = [number((initial.get(s) or {}).get(metric)) for s in sites]
    after = [number(final[s][metric]) for s in sites]
    ax.bar(x - 0.2, [np.nan if v is None else v for v in before], 0.4, label="initial model", color="#bbbbbb")
    bars = ax.bar(x + 0.2, after, 0.4, label="final model")
    for bar, site in zip(bars, sites):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"n={final[site].get('samples')}",
            ha="center",
            va="bottom",
            fontsize=6,
        )
    ax.set_xticks(x, sites, rotation=45 if len(sites) > 10 else 0)
    ax.set_ylabel(f"{METRIC_NAMES[metric]} (%) on the site's own test split")
    ax.set_title(f"Per-site {METRIC_NAMES[metric]} (n: the site's test images)\n{_run_title(results)}", fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, path, note, rect=(0, 0, 1, 0.95 if note else 1))


def run_figures(results: dict, folder: Path, prefix: str = "") -> list[Path]:
    """The figures of one run written into `folder` (`prefix` + accuracy_per_round.png, per_site_accuracy.png)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        run_accuracy_per_round(results, folder / f"{prefix}accuracy_per_round.png"),
        run_per_site_accuracy(results, folder / f"{prefix}per_site_accuracy.png"),
    ]
    return [p for p in made if p is not None]

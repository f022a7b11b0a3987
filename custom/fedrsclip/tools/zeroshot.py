"""`fedrsclip zeroshot`: LRSCLIP's zero-shot protocol (seed 003, Table IV) on any backbone and any manifest.

One template ("a satellite photo of {class}." by default), every image of the manifest (train and test of every
site: `--split all`, the protocol's; `--split test` for the test splits alone), top-1 accuracy, per-class
accuracy, and a confusion-matrix PNG. A multi-label manifest (BigEarthNet) gets the ranking measure instead: mAP
and each class's average precision, in a bar chart (a zero-shot model has no threshold for label sets). The
computation is `fedrsclip.zeroshot.zero_shot_accuracy`, the same the sites' reference row uses; image features
go through the feature cache, so a second run with the same backbone and images encodes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..config import Config
from ..data.composite import settings_from_config
from ..data.errors import DataError
from ..data.manifest import is_multi_label, load_manifest, site_split
from ..protocol import site_order
from ..zeroshot import DEFAULT_TEMPLATE, chance_warning, template_text, zero_shot_accuracy
from .reporting.run_table import caveat

KIND = "fedrsclip zeroshot"  # the `kind` of the file it writes: only such a file is ever replaced
SPLITS = ("all", "test")
CACHE_SUBDIR = "zeroshot"  # under data.cache_dir


def figure_path(out: Path, multi_label: bool = False) -> Path:
    """The figure written next to the results file `out`: the confusion matrix, or per-class AP (multi-label)."""
    return out.with_name(f"{out.stem}-{'ap' if multi_label else 'confusion'}.png")


def check_out(out: Path) -> None:
    """Refuse (ValueError) an --out that exists and is not an earlier `fedrsclip zeroshot` result, and a figure
    path held by a file this command did not write."""
    if out.exists():
        try:
            ours = json.loads(out.read_text(encoding="utf-8")).get("kind") == KIND
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"--out {out} exists and is not a fedrsclip zeroshot result: choose another --out")
    else:
        for figure in (figure_path(out), figure_path(out, multi_label=True)):
            if figure.exists():
                raise ValueError(f"{figure} exists and was not written with --out {out}: choose another --out")


def manifest_items(manifest: dict[str, Any], split: str, root: str | None) -> list[tuple[Path, Any]]:
    """Every site's images of `split` ("all": train and test), in site order, with their label (a class index, or a
    tuple of them for a multi-label manifest); DataError for missing files."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    parts = ("train", "test") if split == "all" else (split,)
    items = [
        item
        for site in sorted(manifest["sites"], key=site_order)
        for part in parts
        for item in site_split(manifest, site, part, root=root, multi_label=is_multi_label(manifest))
    ]
    missing = [p for p, _ in items if not p.exists()]  # an image file, or a BigEarthNet patch folder
    if missing:
        raise DataError(
            f"{len(missing)} of the manifest's {len(items)} images are missing, e.g. {missing[0]}; set "
            "data.root (--set data.root=FOLDER) to the folder the manifest's paths are relative to (the dataset's "
            "root: its class folders, or its patch folders)"
        )
    if not items:
        raise DataError(f"the manifest has no {split} images")
    return items


def run_zeroshot(
    cfg: Config,
    manifest_path: str | Path,
    out: str | Path,
    template: str = DEFAULT_TEMPLATE,
    split: str = "all",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate zero-shot CLIP on the manifest's images, write the results (JSON) to `out` and the confusion
    matrix (multi-label: per-class AP) next to it (`figure_path`); returns the results. Raises DataError /
    ConfigError / BackboneError with what to fix."""
    from ..backbone import open_backbone
    from ..features import cached_features
    from ..prompts import load_class_descriptions

    out = Path(out)
    check_out(out)
    template = template_text(template)
    manifest = load_manifest(manifest_path)
    classes = list(manifest["classes"])
    descriptions = (
        load_class_descriptions(cfg.prompt.class_descriptions, classes) if cfg.prompt.class_descriptions else None
    )
    items = manifest_items(manifest, split, cfg.data.root)
    backbone = open_backbone(cfg.model, cfg.data.cache_dir)
    features = cached_features(
        backbone,
        items,
        Path(cfg.data.cache_dir) / CACHE_SUBDIR,
        f"{split}",
        progress=progress,
        image=settings_from_config(cfg.data, manifest.get("modality")),
        num_classes=len(classes) if is_multi_label(manifest) else None,
    )
    result = zero_shot_accuracy(backbone, classes, features, template, descriptions)
    results = {
        "kind": KIND,
        "manifest": str(Path(manifest_path).resolve()),
        "dataset": manifest.get("dataset"),
        "split": split,
        "classes": classes,
        "class_descriptions": cfg.prompt.class_descriptions,
        "backbone": backbone.description,
        "weights": backbone.weights,
        "data_source": "manifest",
        "skipped": [list(s) for s in features.skipped],
        **result,
        "warning": chance_warning(
            result, "all images of the manifest" if split == "all" else f"the manifest's {split} images"
        ),
    }
    atomic_write_json(out, results)
    results["figure"] = str(write_figure(results, figure_path(out, multi_label=results["accuracy"] is None)))
    return results


def write_figure(results: dict[str, Any], path: Path) -> Path:
    """The confusion matrix with each class's accuracy beside its name (multi-label: each class's AP), the caveat
    stamped when it applies."""
    from .reporting.figures import confusion_figure, per_class_bars

    if results["accuracy"] is None:
        title = (
            f"Zero-shot {results['backbone']}: mAP {_pct(results['mAP'])} on {results['samples']} multi-label images "
            f'({results["split"]})\nprompt "{results["prompt"].format("{class}")}"; average precision per class'
        )
        return per_class_bars(results["per_class_ap"], results["classes"], title, path, caveat(results), "AP (%)")
    labels = [f"{c} ({'-' if a is None else f'{a:.0f}%'})" for c, a in zip(results["classes"], results["per_class"])]
    title = (
        f"Zero-shot {results['backbone']}: {results['accuracy']:.1f}% top-1 on {results['samples']} images "
        f'({results["split"]})\nprompt "{results["prompt"].format("{class}")}"; chance '
        f"{results['chance']:.1f}%; rows: true class (its accuracy)"
    )
    return confusion_figure(results["confusion"], results["classes"], title, path, caveat(results), row_labels=labels)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def format_results(results: dict[str, Any]) -> str:
    """The printed summary: accuracy and chance (multi-label: mAP), the per-class figures, the warnings."""
    width = max(len(c) for c in results["classes"])
    multi = results["accuracy"] is None
    lines = [
        f"zero-shot: {results['backbone']} ({results['weights']})",
        f"data: {results['manifest']} ({results['dataset']}, {results['split']}: {results['samples']} images, "
        f"{len(results['classes'])} classes{', multi-label' if multi else ''})",
        f'prompt: "{results["prompt"].format("{class}")}"'
        + (f" with the descriptions of {results['class_descriptions']}" if results.get("class_descriptions") else ""),
    ]
    if multi:
        lines += [
            f"mAP: {_pct(results['mAP'])} (mean average precision over the classes present; no threshold)",
            "",
            f"{'class'.ljust(width)}  images  AP",
        ]
        rows = zip(results["classes"], results["per_class_ap"], results["positives"])
    else:
        lines += [
            f"top-1 accuracy: {results['accuracy']:.2f}% (chance {results['chance']:.2f}%)",
            "",
            f"{'class'.ljust(width)}  images  accuracy",
        ]
        rows = zip(results["classes"], results["per_class"], (sum(row) for row in results["confusion"]))
    for name, value, total in rows:
        lines.append(f"{name.ljust(width)}  {total:6d}  {'-' if value is None else f'{value:7.1f}%'}")
    if results.get("skipped"):
        lines.append(f"{len(results['skipped'])} unreadable images skipped (listed in the results file)")
    note = caveat(results)
    if note:
        lines.append(f"*** {note} ***")
    if results.get("warning"):
        lines.append(f"warning: {results['warning']}")
    return "\n".join(lines)

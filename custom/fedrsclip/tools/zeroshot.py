"""`fedrsclip zeroshot`: LRSCLIP's zero-shot protocol (seed 003, Table IV) on any backbone and any manifest.

One template ("a satellite photo of {class}." by default), every image of the manifest (train and test of every
site: `--split all`, the protocol's; `--split test` for the test splits alone), top-1 accuracy, per-class
accuracy, and a confusion-matrix PNG. The computation is `fedrsclip.zeroshot.zero_shot_accuracy`, the same the
sites' reference row uses; image features go through the feature cache, so a second run with the same backbone
and images encodes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..config import Config
from ..data.composite import settings_from_config
from ..data.errors import DataError
from ..data.manifest import load_manifest, site_split
from ..protocol import site_order
from ..zeroshot import DEFAULT_TEMPLATE, chance_warning, template_text, zero_shot_accuracy
from .reporting.run_table import caveat

KIND = "fedrsclip zeroshot"  # the `kind` of the file it writes: only such a file is ever replaced
SPLITS = ("all", "test")
CACHE_SUBDIR = "zeroshot"  # under data.cache_dir


def figure_path(out: Path) -> Path:
    """The confusion-matrix PNG written next to the results file `out`."""
    return out.with_name(f"{out.stem}-confusion.png")


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
    elif figure_path(out).exists():
        raise ValueError(f"{figure_path(out)} exists and was not written with --out {out}: choose another --out")


def manifest_items(manifest: dict[str, Any], split: str, root: str | None) -> list[tuple[Path, int]]:
    """Every site's images of `split` ("all": train and test), in site order; DataError for missing files."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    parts = ("train", "test") if split == "all" else (split,)
    items = [
        item
        for site in sorted(manifest["sites"], key=site_order)
        for part in parts
        for item in site_split(manifest, site, part, root=root)
    ]
    missing = [p for p, _ in items if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the manifest's {len(items)} images are missing, e.g. {missing[0]}; set "
            "data.root (--set data.root=FOLDER) to the folder that holds the class folders"
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
    matrix next to it (`figure_path`); returns the results. Raises DataError / ConfigError / BackboneError with
    what to fix."""
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
    results["figure"] = str(write_figure(results, figure_path(out)))
    return results


def write_figure(results: dict[str, Any], path: Path) -> Path:
    """The confusion matrix with each class's accuracy beside its name, the caveat stamped when it applies."""
    from .reporting.figures import confusion_figure

    labels = [f"{c} ({'-' if a is None else f'{a:.0f}%'})" for c, a in zip(results["classes"], results["per_class"])]
    title = (
        f"Zero-shot {results['backbone']}: {results['accuracy']:.1f}% top-1 on {results['samples']} images "
        f'({results["split"]})\nprompt "{results["prompt"].format("{class}")}"; chance '
        f"{results['chance']:.1f}%; rows: true class (its accuracy)"
    )
    return confusion_figure(results["confusion"], results["classes"], title, path, caveat(results), row_labels=labels)


def format_results(results: dict[str, Any]) -> str:
    """The printed summary: accuracy, chance, the per-class accuracies, the warnings."""
    width = max(len(c) for c in results["classes"])
    totals = [sum(row) for row in results["confusion"]]
    lines = [
        f"zero-shot: {results['backbone']} ({results['weights']})",
        f"data: {results['manifest']} ({results['dataset']}, {results['split']}: {results['samples']} images, "
        f"{len(results['classes'])} classes)",
        f'prompt: "{results["prompt"].format("{class}")}"'
        + (f" with the descriptions of {results['class_descriptions']}" if results.get("class_descriptions") else ""),
        f"top-1 accuracy: {results['accuracy']:.2f}% (chance {results['chance']:.2f}%)",
        "",
        f"{'class'.ljust(width)}  images  accuracy",
    ]
    for name, accuracy, total in zip(results["classes"], results["per_class"], totals):
        lines.append(f"{name.ljust(width)}  {total:6d}  {'-' if accuracy is None else f'{accuracy:7.1f}%'}")
    if results.get("skipped"):
        lines.append(f"{len(results['skipped'])} unreadable images skipped (listed in the results file)")
    note = caveat(results)
    if note:
        lines.append(f"*** {note} ***")
    if results.get("warning"):
        lines.append(f"warning: {results['warning']}")
    return "\n".join(lines)

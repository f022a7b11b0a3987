"""Zero-shot CLIP classification: one hand-written prompt per class, no training (the reference row of the tables).

The protocol is LRSCLIP's (seed 003, Table IV): the single template "a satellite photo of {class}", every image
of a dataset (train and test), top-1 accuracy. `zero_shot_accuracy` is the one implementation: the sites' reference
on their test split (`fedrsclip.site.PromptSite.zero_shot`), the in-process runner, the site-local predictions
and `fedrsclip zeroshot` all call it. `chance_warning` says when an accuracy is not distinguishable from chance,
which on a labelled split means random weights, a wrong class list, or class names the encoder cannot read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .config import ConfigError

if TYPE_CHECKING:  # torch only where a model runs: reports and the server read results with the rest
    import torch

    from .backbone import Backbone
    from .features import FeatureSet

DEFAULT_TEMPLATE = "a satellite photo of {}."  # LRSCLIP's, with the sentence's full stop as CLIP's templates have
CHANCE_LEVEL = 0.01  # one-sided binomial test: above chance when P(X >= correct | chance) is below this


def template_text(template: str) -> str:
    """`template` with its class placeholder as `{}`: it may be written `{class}` or `{}`, exactly once.
    ConfigError otherwise."""
    text = template.replace("{class}", "{}")
    if text.count("{}") != 1 or text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
        raise ConfigError(
            f"the zero-shot template {template!r} must hold the class placeholder {{class}} (or {{}}) "
            "once and no other braces, e.g. 'a satellite photo of {class}.'"
        )
    return text


def zero_shot_scores(
    backbone: Backbone,
    classnames: Sequence[str],
    features: FeatureSet,
    template: str = DEFAULT_TEMPLATE,
    descriptions: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Cosine similarity [N, K] between each image's global embedding and the encoded `template` of each class. A
    class's text is its description from `descriptions` (`fedrsclip.prompts.load_class_descriptions`), else its
    name with '_' as spaces, the text the learned prompts use. A text over the encoder's context stops with the
    class and the limit (ConfigError) instead of being cut."""
    import torch
    import torch.nn.functional as F

    from .prompts import check_texts_fit, class_texts

    template = template_text(template)
    texts = [template.format(t) for t in class_texts(list(classnames), descriptions)]
    check_texts_fit(backbone.tokenizer, texts, list(classnames), backbone.context_length)
    with torch.no_grad():
        text = F.normalize(backbone.encode_text(texts).float(), dim=-1).cpu()
        image = F.normalize(features.global_feats.float(), dim=-1)
        return image @ text.T


def zero_shot_predict(
    backbone: Backbone,
    classnames: Sequence[str],
    features: FeatureSet,
    template: str = DEFAULT_TEMPLATE,
    descriptions: Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Predicted class [N] of each image: the highest of its `zero_shot_scores`."""
    return zero_shot_scores(backbone, classnames, features, template, descriptions).argmax(-1)


def zero_shot_accuracy(
    backbone: Backbone,
    classnames: Sequence[str],
    features: FeatureSet,
    template: str = DEFAULT_TEMPLATE,
    descriptions: Mapping[str, str] | None = None,
) -> dict:
    """Zero-shot top-1 accuracy (%) over `features` (single-label), with its parts.

    Returns {"accuracy", "samples", "prompt" (the template), "chance" (100 / K, %), "per_class" (accuracy % of
    each class, None for a class without images), "confusion" ([true][predicted] counts, K x K)}. Multi-label
    features (multi-hot labels [N, K]): {"accuracy": None, "mAP" (%, over the classes present), "samples",
    "prompt", "per_class_ap" (AP % of each class, None for a class without positives), "positives" (images of each
    class)}: a zero-shot model has no threshold, so the ranking measure only.
    """
    if features.labels.ndim == 2:
        from .multilabel import average_precision

        scores = zero_shot_scores(backbone, classnames, features, template, descriptions).numpy()
        positives = features.labels.numpy() > 0
        per_class_ap = [
            float(average_precision(scores[:, k], positives[:, k])) * 100.0 if positives[:, k].any() else None
            for k in range(positives.shape[1])
        ]
        ap = [a for a in per_class_ap if a is not None]
        return {
            "accuracy": None,
            "mAP": float(np.mean(ap)) if ap else None,
            "samples": len(features),
            "prompt": template_text(template),
            "per_class_ap": per_class_ap,
            "positives": positives.sum(axis=0).astype(int).tolist(),
        }
    labels = features.labels.numpy().astype(np.int64)
    pred = zero_shot_predict(backbone, classnames, features, template, descriptions).numpy()
    k = len(classnames)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    totals = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / totals[i] * 100.0) if totals[i] else None for i in range(k)]
    return {
        "accuracy": float((pred == labels).mean() * 100.0) if len(labels) else float("nan"),
        "samples": int(len(labels)),
        "prompt": template_text(template),
        "chance": 100.0 / k,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def above_chance_p(correct: int, samples: int, classes: int) -> float:
    """One-sided p-value of `correct` of `samples` right or more if every answer were a uniform guess over
    `classes` classes (binomial test, scipy.stats.binomtest)."""
    from scipy.stats import binomtest

    if samples <= 0:
        return 1.0
    return float(binomtest(int(correct), int(samples), 1.0 / classes, alternative="greater").pvalue)


def chance_warning(result: Mapping[str, Any], what: str = "the test split") -> str | None:
    """A warning when a zero-shot accuracy (a `zero_shot_accuracy` result, or any {"accuracy", "samples",
    "chance"}) is not distinguishable from guessing (one-sided binomial test at `CHANCE_LEVEL`) and under twice
    chance, else None.

    Sound on a labelled split: a pretrained CLIP reads scene names well above chance (LRSCLIP's Table IV: 40-85% on
    31-45 classes), so an accuracy at chance means random weights, a wrong class list or unreadable class names.
    The second condition keeps a handful of images with a high accuracy (too few for the test) from warning."""
    accuracy, samples, chance = result.get("accuracy"), result.get("samples"), result.get("chance")
    if not isinstance(accuracy, (int, float)) or not samples or not chance or not np.isfinite(accuracy):
        return None
    classes = round(100.0 / chance)
    correct = round(accuracy / 100.0 * samples)
    p = above_chance_p(correct, samples, classes)
    if p < CHANCE_LEVEL or accuracy >= 2 * chance:
        return None
    return (
        f"zero-shot accuracy {accuracy:.1f}% on {what} ({samples} images, {classes} classes) is not above "
        f"chance ({chance:.1f}%; binomial test p = {p:.2f}): check the weights (model.pretrained; random weights "
        "give chance), the class list and the class names (fedrsclip data classes)"
    )


def pool(results: Sequence[Mapping[str, Any]]) -> dict | None:
    """Several sites' `zero_shot_accuracy` results on disjoint images of the same classes, as one: accuracy over
    all their images, summed confusion counts; for multi-label results the test-sample weighted mAP. None when
    there is none."""
    results = [r for r in results if r and r.get("samples")]
    if not results:
        return None
    samples = sum(int(r["samples"]) for r in results)
    if results[0].get("accuracy") is None:  # multi-label: each site's mAP, weighted by its scenes
        scored = [r for r in results if r.get("mAP") is not None]
        weight = sum(int(r["samples"]) for r in scored)
        return {
            "accuracy": None,
            "mAP": sum(r["mAP"] * r["samples"] for r in scored) / weight if weight else None,
            "samples": samples,
            "prompt": results[0].get("prompt"),
        }
    out: dict[str, Any] = {
        "accuracy": sum(r["accuracy"] * r["samples"] for r in results) / samples,
        "samples": samples,
        "prompt": results[0].get("prompt"),
        "chance": results[0].get("chance"),
    }
    confusions = [np.asarray(r["confusion"]) for r in results if r.get("confusion")]
    if len(confusions) == len(results) and len({c.shape for c in confusions}) == 1:
        confusion = np.sum(confusions, axis=0)
        totals = confusion.sum(axis=1)
        out["confusion"] = confusion.tolist()
        out["per_class"] = [
            float(confusion[i, i] / totals[i] * 100.0) if totals[i] else None for i in range(len(totals))
        ]
    return out

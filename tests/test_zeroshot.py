"""Zero-shot CLIP (LRSCLIP's protocol): `fedrsclip zeroshot` on the real UC Merced sample with the tiny model, its
figure, the chance warning that labels a run from its data, and the class descriptions reaching the sites'
reference row."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fedrsclip.cli import main
from fedrsclip.zeroshot import chance_warning, pool, template_text, zero_shot_accuracy
from helpers import REAL_DATA, TINY, tiny_config

requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"no UC Merced sample at {REAL_DATA}")
TINY_SET = [f"--set={s}" for s in TINY]


@pytest.fixture(scope="module")
def ucm(tmp_path_factory):
    """The real UC Merced sample (21 classes x 10 images) partitioned over 2 sites."""
    tmp = tmp_path_factory.mktemp("ucm")
    manifest = tmp / "ucm2.json"
    assert (
        main(
            [
                "data",
                "partition",
                "--dataset",
                "imagefolder",
                "--root",
                str(REAL_DATA),
                "--sites",
                "2",
                "--quiet",
                "--out",
                str(manifest),
            ]
        )
        == 0
    )
    return {"manifest": manifest, "tmp": tmp, "cache": tmp / "cache"}


@requires_real_data
def test_zeroshot_on_the_uc_merced_sample_writes_results_and_figure(ucm, capsys):
    out = ucm["tmp"] / "zs.json"
    assert (
        main(
            [
                "zeroshot",
                "--manifest",
                str(ucm["manifest"]),
                "--out",
                str(out),
                *TINY_SET,
                f"--set=data.cache_dir={ucm['cache']}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["split"] == "all" and results["samples"] == 210 and len(results["classes"]) == 21
    assert results["prompt"] == "a satellite photo of {}." and results["chance"] == pytest.approx(100 / 21)
    confusion = np.asarray(results["confusion"])
    assert confusion.shape == (21, 21) and confusion.sum() == 210 and (confusion.sum(axis=1) == 10).all()
    assert results["accuracy"] == pytest.approx(np.trace(confusion) / 210 * 100)
    assert results["per_class"] == pytest.approx([confusion[i, i] * 10.0 for i in range(21)])
    assert results["weights"] == "random" and "RANDOM-weight CLIP" in printed
    assert f"top-1 accuracy: {results['accuracy']:.2f}%" in printed and "airplane" in printed
    figure = ucm["tmp"] / "zs-confusion.png"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 500
    test_only = ucm["tmp"] / "zs-test.json"
    assert (
        main(
            [
                "zeroshot",
                "--manifest",
                str(ucm["manifest"]),
                "--out",
                str(test_only),
                "--split",
                "test",
                "--template",
                "an aerial image of {class}",
                *TINY_SET,
                f"--set=data.cache_dir={ucm['cache']}",
            ]
        )
        == 0
    )
    tested = json.loads(test_only.read_text())
    assert tested["samples"] == 105 and tested["prompt"] == "an aerial image of {}"


@requires_real_data
def test_a_random_file_is_labelled_a_file_and_its_chance_accuracy_warns(ucm, tmp_path, capsys):
    """A checkpoint of random values named vit-b-32-weights.safetensors got no caveat for 18.6% accuracy: it is
    labelled by what is known (a file and its hash), and its zero-shot accuracy at chance warns."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = open_clip.create_model("fedrsclip-tiny", pretrained=None)
    weights = tmp_path / "vit-b-32-weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = tmp_path / "zs.json"
    assert (
        main(
            [
                "zeroshot",
                "--manifest",
                str(ucm["manifest"]),
                "--out",
                str(out),
                "--set=model.arch=fedrsclip-tiny",
                f"--set=model.pretrained={weights}",
                "--set=model.quick_gelu=false",
                f"--set=data.cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert results["weights"].startswith("file:") and "RANDOM" not in printed
    assert results["warning"] and "is not above chance" in results["warning"]
    assert "warning: zero-shot accuracy" in printed


@requires_real_data
def test_out_that_is_not_a_zeroshot_result_is_refused_and_kept(ucm, tmp_path, capsys):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": true}')
    assert main(["zeroshot", "--manifest", str(ucm["manifest"]), "--out", str(mine), *TINY_SET]) == 2
    assert "is not a fedrsclip zeroshot result" in capsys.readouterr().err
    assert mine.read_text() == '{"mine": true}'


def test_template_placeholder():
    assert template_text("a satellite photo of {class}.") == "a satellite photo of {}."
    assert template_text("{} from above") == "{} from above"
    for bad in ("a satellite photo", "{class} and {class}", "{class} {x}"):
        with pytest.raises(ValueError, match="placeholder"):
            template_text(bad)


def test_chance_warning_only_when_not_above_chance():
    assert "not above chance" in chance_warning({"accuracy": 5.0, "samples": 210, "chance": 100 / 21})
    assert chance_warning({"accuracy": 18.6, "samples": 210, "chance": 100 / 21}) is None  # p < 1e-9
    assert chance_warning({"accuracy": 50.0, "samples": 2, "chance": 100 / 21}) is None  # too few to tell, not low
    assert chance_warning({"accuracy": 10.0, "samples": 0, "chance": 10.0}) is None
    merged = pool(
        [
            {"accuracy": 50.0, "samples": 10, "chance": 10.0, "confusion": [[5, 5], [5, 5]]},
            {"accuracy": 100.0, "samples": 30, "chance": 10.0, "confusion": [[15, 0], [0, 15]]},
        ]
    )
    assert merged["accuracy"] == pytest.approx(87.5) and merged["confusion"] == [[20, 5], [5, 20]]
    assert merged["per_class"] == pytest.approx([80.0, 80.0])


def test_the_sites_reference_uses_the_class_descriptions(synth_manifest, feature_cache, tmp_path):
    """The site-local predictions and the in-process runner called the zero-shot reference without the
    descriptions the learned prompts use (prompt.class_descriptions)."""
    from fedrsclip.factory import make_site
    from fedrsclip.prompts import load_class_descriptions

    classes = synth_manifest["classes"]
    path = tmp_path / "descriptions.yaml"
    path.write_text(
        "".join(f"{c}: a scene with {c} seen from {'far' if i % 2 else 'near'} above\n" for i, c in enumerate(classes))
    )
    cfg = tiny_config(f"prompt.class_descriptions={path}", cache_dir=feature_cache)
    site = make_site(cfg, "site-1", synth_manifest)
    with_texts = zero_shot_accuracy(
        site.backbone, classes, site.test_set, descriptions=load_class_descriptions(path, classes)
    )
    names_only = zero_shot_accuracy(site.backbone, classes, site.test_set)
    assert with_texts["confusion"] != names_only["confusion"]  # the texts matter for this model and data
    assert site.zero_shot()["confusion"] == with_texts["confusion"]


BIGEARTHNET = REAL_DATA.parent / "bigearthnet-sample"


@pytest.mark.skipif(not BIGEARTHNET.is_dir(), reason=f"no BigEarthNet sample at {BIGEARTHNET}")
def test_zeroshot_on_a_multi_label_manifest_gives_map_and_per_class_ap(tmp_path, capsys):
    """BigEarthNet's label sets (the real S1 sample): the ranking measure, mAP and each class's AP, with a bar chart
    (before: the command stopped, the single-label path refusing the manifest)."""
    manifest = tmp_path / "ben.json"
    args = ["data", "partition", "--dataset", "bigearthnet-s1", "--root", str(BIGEARTHNET), "--sites", "1"]
    assert main([*args, "--quiet", "--out", str(manifest)]) == 0
    out = tmp_path / "zs.json"
    rc = main(
        ["zeroshot", "--manifest", str(manifest), "--out", str(out), *TINY_SET, f"--set=data.cache_dir={tmp_path}"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    present = [ap for ap, n in zip(results["per_class_ap"], results["positives"]) if n]
    assert results["accuracy"] is None and results["samples"] == 6 and len(results["classes"]) == 19
    assert sum(results["positives"]) >= 6 and all(0 <= ap <= 100 for ap in present)
    assert [ap is None for ap in results["per_class_ap"]] == [n == 0 for n in results["positives"]]
    assert results["mAP"] == pytest.approx(np.mean(present))
    assert "mAP:" in printed and "multi-label" in printed and "per-class AP" in printed
    with Image.open(tmp_path / "zs-ap.png") as image:
        assert image.size[0] > 300

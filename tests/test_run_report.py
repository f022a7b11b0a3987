"""One run's report: per-phase timings that add up to a site's seconds, the server's per-round progress line with
its ETA, a resumed run's round count, the figures with their caveat in the image, and `fedrsclip report` on an
in-process results file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fedrsclip.cli import main
from fedrsclip.protocol import RoundRecord, class_fingerprint
from fedrsclip.results_file import ResultsBook
from fedrsclip.tools.reporting.figures import MISTAKE
from fedrsclip.tools.reporting.run_table import format_table
from helpers import REAL_DATA, TINY

CLASSES = class_fingerprint(["a", "b"])


def _record(rnd: int, timings: dict, accuracy: float = 50.0) -> RoundRecord:
    return RoundRecord(
        round=rnd,
        samples_train=10,
        classes=CLASSES,
        timings=timings,
        seconds=sum(timings.values()),
        received={"accuracy": accuracy, "loss": 1.0, "samples": 10},
    )


def test_progress_line_names_the_round_the_slowest_site_and_the_time_left(monkeypatch):
    clock = iter([0.0, 0.0, 700.0, 700.0, 706.0, 706.0, 712.0])
    monkeypatch.setattr("fedrsclip.results_file.time.time", lambda: next(clock))
    book = ResultsBook("flare", sites=["site-1", "site-2"], num_rounds=5)
    first = {"start": 12.0, "load": 30.0, "extract": 650.0, "evaluate": 3.0, "train": 8.0}
    book.round_started(1)
    book.add_update("site-1", _record(1, first, 10.0))
    book.add_update("site-2", _record(1, {"evaluate": 1.0, "train": 2.0}, 20.0))
    book.round_done(1)
    line = book.progress_line(1)
    assert line.startswith(
        "round 1/5 done in 700.0s: 2/2 sites; slowest site-1 703.0s (start 12.0, load 30.0, "
        "extract 650.0, evaluate 3.0, train 8.0); mean accuracy 15.0% of the initial model"
    )
    # only round 1 so far: it is the estimate, less the slowest site's start-up (12 + 30 + 650 s of its 700 s)
    assert "about 32s left for 4 rounds" in line
    for rnd in (2, 3):
        book.round_started(rnd)
        for site in ("site-1", "site-2"):
            book.add_update(site, _record(rnd, {"evaluate": 1.0, "train": 5.0}, 40.0))
        book.round_done(rnd)
    line = book.progress_line(3)
    assert line.startswith("round 3/5 done in 6.0s: 2/2 sites") and "mean accuracy 40.0% after round 2" in line
    assert line.endswith("about 12s left for 2 rounds")  # rounds after the first: 6 s each


def test_the_table_shows_each_phase_of_a_round_that_started_a_site():
    """A site's recorded seconds left out process start and feature extraction (5.8 s for a 703 s round)."""
    phases = {"start": 12.0, "load": 30.2, "extract": 650.0, "evaluate": 3.1, "train": 7.9}
    results = {
        "rounds": [
            {"round": 1, "sites": {"site-1": {"accuracy": 10.0, "seconds": sum(phases.values()), "timings": phases}}},
            {
                "round": 2,
                "sites": {"site-1": {"accuracy": 20.0, "seconds": 5.8, "timings": {"evaluate": 0.3, "train": 5.5}}},
            },
            {
                "round": 3,
                "sites": {"site-1": {"accuracy": 30.0, "seconds": 6.0, "timings": {"evaluate": 0.3, "train": 5.7}}},
            },
        ],
        "sites": ["site-1"],
        "num_rounds": 3,
    }
    table = format_table(results)
    assert "  in round 1: 703.2 = start 12.0 + load 30.2 + extract 650.0 + evaluate 3.1 + train 7.9" in table
    assert "  the other 2 rounds: 5.8 to 6.0 (evaluate + train)" in table


def test_a_resumed_run_counts_its_rounds_after_the_earlier_runs():
    """A resumed run reported "11/10 rounds"."""
    rounds = [{"round": 10, "sites": {"site-1": {"accuracy": 45.0}}}]  # the resumed model, evaluated in this run
    rounds += [{"round": r, "sites": {"site-1": {"accuracy": 50.0, "samples_train": 5}}} for r in range(11, 21)]
    title = format_table({"rounds": rounds, "sites": ["site-1"], "num_rounds": 20, "status": "finished"})
    assert "20/20 rounds (rounds 11-20 in this run, resumed after round 10), status finished" in title


def _banner(path) -> bool:
    """The caveat's red banner across the top of the image."""
    with Image.open(path) as image:
        top = np.asarray(image.convert("RGB"))[:40]
    red = tuple(int(MISTAKE[i : i + 2], 16) for i in (1, 3, 5))
    return bool((np.abs(top.astype(int) - red).sum(axis=-1) < 30).sum() > 200)


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "r.json"
    assert (
        main(
            [
                "run",
                "--set=data.source=synthetic",
                *[f"--set={s}" for s in TINY],
                "--set=data.synthetic_sites=2",
                "--set=data.synthetic_per_class=10",
                f"--set=data.cache_dir={tmp / 'cache'}",
                "--rounds",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_report_of_an_in_process_results_file_writes_figures_with_the_caveat(inprocess, capsys, tmp_path):
    """`fedrsclip report` exited 2 on a `fedrsclip run` results file while printing its table."""
    capsys.readouterr()
    assert main(["report", str(inprocess)]) == 0
    out = capsys.readouterr().out
    assert 'zero-shot CLIP ("a satellite photo of {class}.", no training)' in out
    figures = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("figure: ")]
    assert [p.rsplit("/", 1)[1] for p in figures] == ["r-accuracy_per_round.png", "r-per_site_accuracy.png"]
    for figure in figures:
        assert _banner(figure), f"{figure} does not carry the caveat"
    # the same results relabelled as a real run: no banner
    results = json.loads(inprocess.read_text())
    real = tmp_path / "real.json"
    real.write_text(json.dumps({**results, "weights": "tag:openai", "data_source": "manifest"}))
    assert main(["report", str(real), "--figures", str(tmp_path / "figs")]) == 0
    assert not _banner(tmp_path / "figs" / "real-accuracy_per_round.png")


BIGEARTHNET = REAL_DATA.parent / "bigearthnet-sample" / "S2" / "S2A_MSIL2A_20170617T113321_4_55"


@pytest.mark.skipif(not BIGEARTHNET.is_dir(), reason=f"no BigEarthNet sample at {BIGEARTHNET}")
def test_the_prediction_grid_shows_images_as_the_encoder_saw_them(tmp_path, caplog):
    """The grid opened images with plain Pillow: a band-per-file patch could not be shown, a 16-bit image was
    clipped to white, and no pixel cap applied. It now draws each one through `load_rgb`, as extraction does."""
    from fedrsclip.data.composite import image_settings
    from fedrsclip.data.images import load_rgb
    from fedrsclip.tools.reporting.figures import prediction_grid, sample_image

    deep = tmp_path / "deep.tif"  # 12-bit values in a 16-bit TIFF, as aerial cameras write them
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)).save(deep)
    record = {
        "cell": {"algorithm": "fedrsclip", "column": "2", "seed": 0},
        "settings": {"overrides": []},
        "results": {"weights": "tag:openai", "data_source": "manifest"},
        "site_predictions": {
            "site-1": {
                "classes": ["pasture", "field"],
                "samples": [
                    {"path": str(BIGEARTHNET), "true": 0, "predicted": 1},
                    {"path": str(deep), "true": 1, "predicted": 1},
                ],
            }
        },
    }
    patch = sample_image(record, str(BIGEARTHNET))
    assert patch.shape == (120, 120, 3)
    np.testing.assert_array_equal(patch, np.asarray(load_rgb(BIGEARTHNET, image_settings(dataset_modality="s2"))))
    shown = sample_image(record, str(deep))
    assert (shown == 255).mean() < 0.01 and shown.max() == 255  # scaled as 0..4095, not clipped at 255
    capped = {**record, "settings": {"overrides": ["data.max_pixels=1000"]}}
    with pytest.raises(ValueError, match="max_pixels"):  # the cell's pixel cap applies
        sample_image(capped, str(deep))
    with caplog.at_level("WARNING"):
        path = prediction_grid(record, tmp_path / "grid.png")
    assert path.is_file() and not [r for r in caplog.records if "prediction grid" in r.getMessage()]


def test_a_long_extraction_without_a_bar_logs_its_progress(tiny_backbone, synth_root, monkeypatch, caplog):
    """A FLARE site (no progress bar) said nothing until its whole extraction was done."""
    from fedrsclip import features

    items = [(p, 0) for p in sorted(synth_root.rglob("*.png"))[:40]]
    monkeypatch.setattr(features, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level("INFO", logger="fedrsclip.features"):
        features.extract_features(tiny_backbone, items, batch_size=8, progress=False, desc="train features")
    notes = [r.getMessage() for r in caplog.records if "images/s, about" in r.getMessage()]
    assert notes and notes[0].startswith("train features: 8/40 images (")


def test_a_run_no_site_reported_to_says_so_in_its_header():
    """A failed run whose sites never sent their first upload: the header names what is unknown, not '?'."""
    book = ResultsBook("flare", sites=["site-1", "site-2"], num_rounds=3)
    book.round_started(1)
    book.round_done(1)
    results = book.snapshot()
    results["status"] = "failed"
    title = format_table(results).splitlines()[0]
    assert "not recorded (no site reported), 2 sites" in title and "status failed" in title
    assert "?" not in title

"""`fedrsclip bench` on bad input and in a folder it did not make: every check before anything is written, messages
that name the option, the paper-scale output folder owned like `fedrsclip job --out`, and what the tables say."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import pytest

from fedrsclip.tools.bench.cli import add_bench_command

TINY = "fedrsclip-tiny"
CLASSES = ("agricultural", "airplane", "beach")


@pytest.fixture
def images(tmp_path) -> Path:
    """A small UC Merced folder (its layout, real .tif files): 3 classes x 2 images."""
    from PIL import Image

    root = tmp_path / "ucm"
    for k, name in enumerate(CLASSES):
        (root / "Images" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * k, 60 * i, 90)).save(root / "Images" / name / f"{name}{i:02d}.tif")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(out: Path, images: Path, sites: int = 2, threads: int | None = None, rounds: int = 1) -> dict:
    from fedrsclip.tools.bench.paper import run_paper_scale

    return run_paper_scale(sites, out, threads=threads, rounds=rounds, images=images, per_class=1, arch=TINY)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrsclip")
    add_bench_command(parser.add_subparsers(dest="command"))
    return parser


# ---- the output folder ----------------------------------------------------------------------------------------------
def test_a_folder_of_the_users_is_refused_before_anything_is_written(tmp_path, images, capsys):
    """The user's report: notes.txt, ws.log, manifest-2.json and paper-scale-2.json of their own in --out-dir were
    replaced (exit 0). Now: exit 2, a message naming --out-dir, every file as it was and nothing added."""
    from fedrsclip.tools.bench.paper import paper_scale_command

    out = tmp_path / "walk-out"
    out.mkdir()
    for name in ("notes.txt", "ws.log", "manifest-2.json", "paper-scale-2.json"):
        (out / name).write_text(f"the user's {name}\n")
    before = _snapshot(out)
    assert paper_scale_command(2, str(out), None, 1, str(images), False, None, []) == 2
    err = capsys.readouterr().err
    assert f"--out-dir {out} is not empty and was not made by fedrsclip bench --paper-scale" in err
    assert "--out " not in err.replace("--out-dir", "")
    assert _snapshot(out) == before


def test_a_file_of_the_users_in_its_job_folder_is_refused_first(tmp_path, images):
    """In an earlier output of the command, a file of the user's in job/paper-scale-2/: refused naming --out-dir
    before the manifest is rewritten or a checkpoint written (the report: after, with a 599 MB checkpoint)."""
    from fedrsclip.flare.job import JobError, mark_written
    from fedrsclip.tools.bench.paper import MADE_BY, MARKER

    out = tmp_path / "walk-out3"
    (out / "job" / "paper-scale-2").mkdir(parents=True)
    (out / "job" / "paper-scale-2" / "mine.txt").write_text("the user's\n")
    (out / "manifest-2.json").write_text("{}\n")
    mark_written(out, ["manifest-2.json"], made_by=MADE_BY, marker=MARKER)
    before = _snapshot(out)
    with pytest.raises(JobError, match=r"--out-dir .*job/paper-scale-2 is not empty .*choose a new or empty folder"):
        _run(out, images)
    assert _snapshot(out) == before


def test_an_earlier_output_may_be_written_again_but_not_a_changed_file(tmp_path):
    """A folder the command made is its own: the files it wrote are replaced, other files are left alone; a file it
    wrote that was changed since, or one it did not write with the name of one it writes, is refused."""
    from fedrsclip.flare.job import JobError, mark_written
    from fedrsclip.tools.bench.paper import MADE_BY, MARKER, check_paper_out, written_files

    out = tmp_path / "earlier"
    out.mkdir()
    for name in written_files(2):
        (out / name).write_text(f"written by the bench: {name}\n")
    mark_written(out, list(written_files(2)), made_by=MADE_BY, marker=MARKER)
    (out / "notes.txt").write_text("the user's, added later: never written by the bench\n")
    check_paper_out(out, 2)
    (out / "ws.log").write_text("edited by the user\n")
    with pytest.raises(JobError, match=r"--out-dir .* did not write or that changed since \(ws.log\)"):
        check_paper_out(out, 2)
    (out / "ws.log").unlink()
    check_paper_out(out, 2)
    (out / "manifest-4.json").write_text("the user's\n")  # not written by a 2-site run: in the way at 4 sites
    with pytest.raises(JobError, match=r"\(manifest-4.json\)"):
        check_paper_out(out, 4)


def test_out_dir_a_file_says_so(tmp_path, images, capsys):
    from fedrsclip.tools.bench.paper import paper_scale_command
    from fedrsclip.tools.bench.scaling import check_scaling_out

    afile = tmp_path / "walk-afile"
    afile.write_text("the user's\n")
    assert paper_scale_command(2, str(afile), None, 1, str(images), False, None, []) == 2
    err = capsys.readouterr().err
    assert f"--out-dir {afile} is a file, not a folder: choose another --out-dir" in err and "Errno" not in err
    assert afile.read_text() == "the user's\n"
    with pytest.raises(ValueError, match="--out-dir .* is a file, not a folder"):
        check_scaling_out(afile)


# ---- inputs and options: checked before any work -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "empty", "no images"])
def test_bad_images_write_nothing(tmp_path, kind):
    bad = tmp_path / "walk-img"
    if kind != "missing":
        bad.mkdir()
    if kind == "no images":
        (bad / "Images" / "beach").mkdir(parents=True)
        (bad / "Images" / "beach" / "readme.md").write_text("no image here\n")
    out = tmp_path / "out"
    with pytest.raises((FileNotFoundError, ValueError), match="walk-img"):
        _run(out, bad)
    assert not out.exists()


def test_sim_threads_above_the_sites_is_refused_up_front(tmp_path, images):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--sim-threads 3 is more than the 2 sites .* give --sim-threads 2 or fewer"):
        _run(out, images, threads=3)
    assert not out.exists()


@pytest.mark.parametrize("gpu, says", [("0,1,2", "makes 3 GPU groups, more than the 2 sites"), ("[0", "GPU list")])
def test_a_gpu_list_the_simulator_refuses_is_refused_up_front(tmp_path, images, gpu, says):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"^--gpu {re.escape(gpu)} .*{says}"):
        from fedrsclip.tools.bench.paper import run_paper_scale

        run_paper_scale(2, out, rounds=1, images=images, per_class=1, arch=TINY, gpu=gpu, cold=True)
    assert not out.exists()


def test_a_bad_setting_writes_nothing(tmp_path, images):
    from fedrsclip.tools.bench.paper import run_paper_scale

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="^--set: unknown setting 'model.nope'"):
        run_paper_scale(2, out, rounds=1, images=images, per_class=1, arch=TINY, overrides=["model.nope=1"])
    assert not out.exists()


@pytest.mark.parametrize("option", ["--paper-scale", "--sim-threads", "--rounds"])
def test_each_count_option_is_named_when_wrong(option, capsys):
    args = {"--paper-scale": "2", "--sim-threads": "1", "--rounds": "1", option: "0"}
    with pytest.raises(SystemExit):
        _parser().parse_args(["bench", *[x for kv in args.items() for x in kv]])
    assert f"argument {option}: expected a positive integer, got 0" in capsys.readouterr().err
    from fedrsclip.tools.bench.paper import check_paper_options

    values = {"--paper-scale": 2, "--sim-threads": 1, "--rounds": 1, option: 0}
    with pytest.raises(ValueError, match=f"^{option} must be at least 1, got 0$"):
        check_paper_options(values["--paper-scale"], values["--sim-threads"], values["--rounds"])


def test_demo_threads_above_the_sites_is_refused_up_front(tmp_path, capsys):
    """`fedrsclip demo --threads 3 --sites 2` (tools/demo.py): refused before the job is made or the simulator run."""
    from fedrsclip.tools.demo import run_demo

    ws = tmp_path / "ws"
    assert run_demo(str(ws), sites=2, threads=3) == 1
    assert "--threads 3 is more than --sites 2" in capsys.readouterr().err
    assert not ws.exists() and not ws.with_name("ws.log").exists()


# ---- what the output says ------------------------------------------------------------------------------------------
def _failed_report(log: Path) -> dict:
    zero = {
        k: 0
        for k in (
            "machine_used_mb_peak",
            "machine_used_mb_before",
            "run_pss_mb_peak",
            "run_rss_mb_peak",
            "site_peak_vmhwm_mb_max",
            "site_peak_pss_mb_max",
            "site_processes_at_once_max",
        )
    }
    return {
        "sites": 2,
        "rounds": 1,
        "threads": 2,
        "model": "m",
        "device": "cpu",
        "data": {"note": "n", "train_per_site": [1], "test_per_site": [1]},
        "status": None,
        "simulator_exit_code": 1,
        "log": str(log),
        "rounds_table": [],
        "job_wall_s": 3.0,
        "memory": zero,
    }


def test_a_failed_simulator_run_shows_its_error_and_log(tmp_path):
    from fedrsclip.flare.simulator import last_error_line
    from fedrsclip.tools.bench.paper import format_paper

    log = tmp_path / "ws.log"
    log.write_text(
        "2026-01-01 - SimulatorRunner - INFO - Create the simulate clients.\n"
        "2026-01-01 - SimulatorRunner - ERROR - The number of GPU groups is wrong.\n"
        "2026-01-01 - SimulatorRunner - INFO - done\n"
    )
    report = {**_failed_report(log), "simulator_error": last_error_line(log)}
    text = format_paper(report)
    assert f"the simulator failed (exit 1): {last_error_line(log)}; full log: {log}" in text
    assert "The number of GPU groups is wrong." in last_error_line(log)
    assert "0 MB" not in text and "memory:" not in text


def test_reused_images_at_a_site_are_said(tmp_path, images):
    """2 images per class (1 per split) at 2 sites: a site takes its class's one image again and again; the note
    and the run's data figures say so."""
    from fedrsclip.tools.bench.paper import reused_partition

    manifest = reused_partition(images, 2, per_class=4)
    assert "a site holds the same image up to 2 times" in manifest["note"]
    assert "same image" not in reused_partition(images, 4, per_class=4)["note"]  # one of each per site


def test_quick_upload_row_says_it_is_a_lower_bound():
    """The quick bench has only the bare DXO's size: its target row says so, and a bound under a `<=` target
    passes nothing."""
    from fedrsclip.tools.bench.run import target_rows
    from fedrsclip.tools.bench.table import format_targets
    from fedrsclip.tools.bench.upload import plaintext_upload

    plain = plaintext_upload({"shared": [0.0] * 2048})
    rows = target_rows({**plain, "upload_bytes_plain": 8844})
    assert rows["plaintext upload"]["pass"] is False
    line = next(x for x in format_targets(rows) if "plaintext upload" in x)
    assert "8,844" in line and "lower bound: bare DXO; the full bench measures the size as sent" in line
    assert target_rows({**plain, "upload_bytes_plain": 8000})["plaintext upload"]["pass"] is None
    measured = {**plain, "upload_bytes_plain": 9799, "upload_bytes_plain_bound": None}
    assert (target_rows(measured)["plaintext upload"]["pass"], target_rows(measured)["plaintext upload"]["note"]) == (
        False,
        None,
    )


def test_help_says_what_was_measured_and_the_flare_switch_reads_clearly():
    parser = _parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    text = " ".join(bench.format_help().split())
    assert "20 GB" not in text and "about 7 GB of memory: PSS" in text
    assert "--flare, --no-flare" in text and "(default: True)" not in text
    assert [parser.parse_args(["bench", *a]).flare for a in ([], ["--flare"], ["--no-flare"])] == [None, True, False]


def test_open_clip_notices_are_quiet_in_the_bench_only(caplog):
    """open_clip logs on the root logger; the bench drops those notices while it runs, not our warnings, not its
    errors, and nothing once it is done."""
    import open_clip

    from fedrsclip.backbone import _register_package_configs
    from fedrsclip.tools.bench.common import quiet_open_clip

    _register_package_configs()
    caplog.set_level(logging.INFO)
    with quiet_open_clip():
        open_clip.create_model(TINY, pretrained=None)
        logging.getLogger("fedrsclip").warning("ours")
        logging.warning("someone else's")
    assert [r.getMessage() for r in caplog.records] == ["ours", "someone else's"]
    caplog.clear()
    open_clip.create_model(TINY, pretrained=None)
    assert any(r.name == "root" and "open_clip" in r.pathname for r in caplog.records)


def test_written_report_is_json(tmp_path):
    """`mark_written` keeps one marker, its files merged (the marker format of `fedrsclip job`)."""
    from fedrsclip.flare.job import mark_written

    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    mark_written(tmp_path, ["a"], made_by="x", marker=".m.json")
    mark_written(tmp_path, ["b"], made_by="x", marker=".m.json")
    saved = json.loads((tmp_path / ".m.json").read_text())
    assert saved["made_by"] == "x" and set(saved["files"]) == {"a", "b"}


@pytest.mark.parametrize("name", ["bench.json", "bench-gpu.json", "paper-scale-10/notes.txt"])
def test_make_bench_gpu_refuses_a_folder_of_the_users_first(tmp_path, name, capsys):
    """`make bench-gpu --out DIR` (same kind: it wrote bench.json and bench-gpu.json by name, and checked its
    paper-scale folder only after the minutes-long bench): refused up front, with or without a GPU."""
    from fedrsclip.tools.bench.gpu import main

    out = tmp_path / "gpu"
    (out / name).parent.mkdir(parents=True)
    (out / name).write_text("the user's\n")
    before = _snapshot(out)
    assert main(["--out", str(out)]) == 2
    assert f"--out {out}" in capsys.readouterr().err
    assert _snapshot(out) == before

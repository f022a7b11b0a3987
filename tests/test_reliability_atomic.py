"""A writer process is killed with SIGKILL at random moments while it keeps saving a site state file, the global
model and the results file with the project's own writers. After every kill each file must load and be one
complete version (every value in it equals the version it records) no older than the last version the writer
finished. The temporary files that interrupted writes leave behind show that the kills do land mid-write."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from fedrsclip.atomic import atomic_torch_save, atomic_write_json
from fedrsclip.flare.model_file import load_npz, save_npz

VALUES = 200_000  # ~0.8 MB per file: a write takes long enough to be interrupted


def writer(folder: Path, done) -> None:
    """Forever: version v of the three files; `done` holds the last version fully written."""
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool (it can hang there)
    version = done.value
    while True:
        version += 1
        atomic_torch_save(
            folder / "site-1-state.pt",
            {"round": version, "prompts": {"private_ctx": torch.full((VALUES,), float(version))}},
        )
        save_npz(
            folder / "FL_global_model.npz", {"shared_ctx": np.full(VALUES, version, np.float32)}, {"round": version}
        )
        atomic_write_json(folder / "fedrsclip_results.json", {"round": version, "values": [version] * (VALUES // 8)})
        done.value = version


def versions(folder: Path) -> dict[str, int]:
    state = torch.load(folder / "site-1-state.pt", weights_only=True)
    assert np.all(state["prompts"]["private_ctx"].numpy() == state["round"])  # numpy: no OpenMP in this process
    weights, info = load_npz(folder / "FL_global_model.npz")
    assert weights["shared_ctx"].shape == (VALUES,) and np.all(weights["shared_ctx"] == info["round"])
    results = json.loads((folder / "fedrsclip_results.json").read_text())
    assert len(results["values"]) == VALUES // 8 and set(results["values"]) == {results["round"]}
    return {"state": state["round"], "model": info["round"], "results": results["round"]}


def test_sigkill_at_random_points_leaves_complete_files(tmp_path):
    ctx = multiprocessing.get_context("fork")  # the child inherits torch already imported: kills come fast
    done = ctx.Value("i", 0, lock=False)  # no lock a killed writer could die holding
    rng = random.Random(0)
    interrupted = 0
    for kill in range(26):
        child = ctx.Process(target=writer, args=(tmp_path, done), daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while done.value < 1 and time.monotonic() < deadline:  # the first kill only after one full version exists
            child.join(0.01)
        if kill % 2:  # at a random moment
            child.join(rng.uniform(0.0, 0.3))
        else:  # the moment a temporary file shows that a write is under way
            while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)) and time.monotonic() < deadline:
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        last = done.value
        strays = set(tmp_path.glob(".*.tmp"))  # a kill inside atomic_write leaves its temporary file
        interrupted += bool(strays)
        for stray in strays:
            stray.unlink()
        found = versions(tmp_path)
        for name, version in found.items():  # the last finished version, or the one being written when killed
            assert version in (last, last + 1), (kill, name, version, last)
    assert interrupted >= 10, f"only {interrupted} of 26 kills landed inside a write: the test proved little"


def test_atomic_files_get_the_mode_a_plain_open_would(tmp_path):
    """A new file gets 0o666 less the umask (manifests, previews and results were owner-only: mkstemp's 0o600), a
    replaced file keeps its mode, and a file that must stay private says so (`mode`)."""
    from fedrsclip.atomic import atomic_write_text

    mode = lambda path: os.stat(path).st_mode & 0o777  # noqa: E731
    umask = os.umask(0o022)
    try:
        new = atomic_write_text(tmp_path / "manifest.json", "{}")
        assert mode(new) == 0o644
        os.chmod(new, 0o640)
        atomic_write_text(new, "{ }")
        assert mode(new) == 0o640 and new.read_text() == "{ }"
        os.umask(0o002)
        assert mode(atomic_write_text(tmp_path / "shared.json", "{}")) == 0o664
        assert mode(atomic_write_text(tmp_path / "secret", "key", mode=0o600)) == 0o600
        assert mode(atomic_write_text(new, "{}", mode=0o600)) == 0o600
    finally:
        os.umask(umask)

"""Make a runnable copy of the FLARE job with a different number of sites, rounds or fedrsclip settings.

The copy changes only configuration: meta.json's min_clients, the server's `min_clients` / `num_rounds` variables,
and the executor's `overrides` (appended, so they win over the job's own). For the synthetic demo data the
number of sites is also data.synthetic_sites, so every site builds the same partition over the same sites.

`he=True` makes the CKKS variant of the same job: the sites get the encryption (result) and decryption (data)
filters of fedrsclip.flare.he_filters, the server the ciphertext aggregator of fedrsclip.flare.he_aggregator; the
rest (workflow, persistor, results) is unchanged, because an encrypted model is still a dict of arrays to them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from ..io import atomic_write, atomic_write_json

EXECUTOR_PATH = "fedrsclip.flare.executor.FedRSCLIPExecutor"
CKKS_AGGREGATOR = "fedrsclip.flare.he_aggregator.CKKSAggregator"
CKKS_ENCRYPTOR = "fedrsclip.flare.he_filters.CKKSEncryptor"
CKKS_DECRYPTOR = "fedrsclip.flare.he_filters.CKKSDecryptor"
DEFAULT_JOB = Path(__file__).resolve().parents[3] / "jobs" / "fedrsclip"  # the repository's job folder


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def job_settings(job: str | Path) -> dict:
    """The job's sites (min_clients), rounds, executor overrides and whether it is the CKKS variant."""
    job = Path(job)
    server = _read(job / "app" / "config" / "config_fed_server.json")
    aggregator = next((c for c in server.get("components", []) if c.get("id") == "aggregator"), {})
    return {"min_clients": server.get("min_clients"), "num_rounds": server.get("num_rounds"),
            "overrides": list(_executor_args(_read(job / "app" / "config" / "config_fed_client.json"))
                              .get("overrides") or []),
            "he": aggregator.get("path") == CKKS_AGGREGATOR}


def _executor_args(client: dict) -> dict:
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("path") == EXECUTOR_PATH:
            return executor.setdefault("args", {})
    raise ValueError(f"the job's config_fed_client.json has no {EXECUTOR_PATH} executor")


def prepare_job(
    src: str | Path,
    dst: str | Path,
    sites: int | None = None,
    rounds: int | None = None,
    overrides: Sequence[str] = (),
    he: bool = False,
) -> Path:
    """Copy the job folder `src` to `dst` (replaced) and set sites, rounds and extra overrides (and CKKS when
    `he`). Returns `dst`."""
    src, dst = Path(src), Path(dst)
    if not (src / "meta.json").is_file():
        raise FileNotFoundError(f"{src} is not a FLARE job folder (no meta.json)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    config = dst / "app" / "config"
    server, client, meta = (_read(config / "config_fed_server.json"), _read(config / "config_fed_client.json"),
                            _read(dst / "meta.json"))
    extra = list(overrides)
    if sites is not None:
        server["min_clients"] = meta["min_clients"] = int(sites)
        extra.insert(0, f"data.synthetic_sites={int(sites)}")
    if rounds is not None:
        server["num_rounds"] = int(rounds)
    args = _executor_args(client)
    current = args.get("overrides") or []
    if isinstance(current, dict):
        raise ValueError("the executor's overrides are a mapping; prepare_job appends 'a.b=c' strings only")
    args["overrides"] = list(current) + extra
    if he:
        _make_ckks(server, client)
        meta["name"] = f"{meta.get('name', src.name)}-he"
    atomic_write_json(config / "config_fed_server.json", server)
    atomic_write_json(config / "config_fed_client.json", client)
    atomic_write_json(dst / "meta.json", meta)
    return dst


def _make_ckks(server: dict, client: dict) -> None:
    """Swap in the ciphertext aggregator and add the site filters (encrypt last on results, decrypt first on data)."""
    aggregator = next((c for c in server.get("components", []) if c.get("id") == "aggregator"), None)
    if aggregator is None:
        raise ValueError("the job's config_fed_server.json has no component with id 'aggregator' to make CKKS")
    if aggregator.get("path") == CKKS_AGGREGATOR:
        return  # already the CKKS variant
    aggregator.update({"path": CKKS_AGGREGATOR,
                       "args": {"min_clients": aggregator.get("args", {}).get("min_clients", 1)}})
    tasks = next((e.get("tasks", []) for e in client.get("executors", [])
                  if e.get("executor", {}).get("path") == EXECUTOR_PATH), [])
    _add_filter(client.setdefault("task_data_filters", []), list(tasks), CKKS_DECRYPTOR, first=True)
    _add_filter(client.setdefault("task_result_filters", []), [t for t in tasks if t == "train"] or tasks[:1],
                CKKS_ENCRYPTOR, first=False)


def _add_filter(chains: list[dict], tasks: list[str], path: str, first: bool) -> None:
    """Put the filter first (decryption) or last (encryption) in the chain of each task; FLARE allows one chain
    per task and direction, so an existing chain for a task is extended rather than duplicated."""
    entry = {"path": path, "args": {}}
    rest = list(tasks)
    for chain in chains:
        if set(chain.get("tasks", [])) & set(rest):
            filters = chain.setdefault("filters", [])
            chain["filters"] = [entry, *filters] if first else [*filters, entry]
            rest = [t for t in rest if t not in chain["tasks"]]
    if rest:
        chains.append({"tasks": rest, "filters": [entry]})


RESUME_MODEL = "config/resume_FL_global_model.npz"  # in the job's app folder: the persistor's `resume_from`
VALIDATING_AGGREGATOR = "fedrsclip.flare.aggregator.ValidatingAggregator"


def set_fault_tolerance(job: str | Path, min_clients: int | None = None, train_timeout: int | None = None,
                        wait_after_min: int | None = None, sites: int | None = None) -> dict:
    """Let rounds go on without some sites: `min_clients` updates suffice (meta.json and the workflow), and are
    needed (the plaintext aggregator stops the job below it; without this option one accepted update is enough);
    `train_timeout` seconds bound a round's wait (0: forever); after min_clients answers the round waits
    `wait_after_min` seconds more for the rest. `sites`: the job's number of sites, if known (a bound for
    min_clients). Returns the values now in the job."""
    job = Path(job)
    config = job / "app" / "config"
    server, meta = _read(config / "config_fed_server.json"), _read(job / "meta.json")
    sag = _workflow_args(server)
    if min_clients is not None:
        if min_clients < 1 or (sites is not None and min_clients > sites):
            raise ValueError(f"--min-clients {min_clients} must be between 1 and the job's {sites or 'N'} sites")
        server["min_clients"] = meta["min_clients"] = int(min_clients)
        aggregator = next((c for c in server.get("components", []) if c.get("id") == "aggregator"), {})
        if aggregator.get("path") in (VALIDATING_AGGREGATOR, CKKS_AGGREGATOR):  # the floor: fewer accepted updates stop the job
            aggregator.setdefault("args", {})["min_clients"] = int(min_clients)
    for value, key, flag in ((train_timeout, "train_timeout", "--train-timeout"),
                             (wait_after_min, "wait_time_after_min_received", "--wait-after-min")):
        if value is not None:
            if value < 0:
                raise ValueError(f"{flag} must be 0 or more seconds, got {value}")
            sag[key] = int(value)
    if train_timeout:  # the final evaluation must not wait its default 6000 s for a site that is gone either
        for workflow in server.get("workflows", []):
            if workflow.get("path", "").endswith("GlobalModelEval"):
                workflow.setdefault("args", {})["validation_timeout"] = int(train_timeout)
    atomic_write_json(config / "config_fed_server.json", server)
    atomic_write_json(job / "meta.json", meta)
    return {"min_clients": server.get("min_clients"), "train_timeout": sag.get("train_timeout"),
            "wait_time_after_min_received": sag.get("wait_time_after_min_received")}


def find_global_model(previous: str | Path) -> Path:
    """An earlier run's FL_global_model.npz: the file, its server app folder, a simulator workspace, or a
    downloaded job result."""
    previous = Path(previous).expanduser().resolve()
    if previous.is_file():
        return previous
    for candidate in (previous / "FL_global_model.npz",
                      previous / "server" / "simulate_job" / "app_server" / "FL_global_model.npz"):
        if candidate.is_file():
            return candidate
    found = sorted(previous.rglob("FL_global_model.npz"), key=lambda p: p.stat().st_mtime) if previous.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no FL_global_model.npz in {previous}: name the aborted run's server app folder "
                                "(<simulator workspace>/server/simulate_job/app_server) or its model file")
    return found[-1]


def resume_job(job: str | Path, previous: str | Path) -> dict:
    """Make `job` continue an aborted run: start from its last global model, at the round recorded in it, with
    each site's state of that run. `job` must have the run's total rounds (the same `fedrsclip job` options)."""
    from .executor import STATE_SUBDIR
    from .persistor import load_npz

    job, model = Path(job), find_global_model(previous)
    try:
        weights, info = load_npz(model)
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"cannot read the global model {model}: {exc}") from exc
    done, job_id = info.get("round"), info.get("job_id")
    if not isinstance(done, int) or not weights:
        raise ValueError(f"{model} records no completed round; it cannot be resumed from")
    config = job / "app" / "config"
    server, client = _read(config / "config_fed_server.json"), _read(config / "config_fed_client.json")
    total = server.get("num_rounds")
    if not isinstance(total, int) or done >= total:
        raise ValueError(f"{model} is the model after round {done}, and the job has {total} rounds: nothing is left "
                         "to run (give --rounds the total number of rounds)")
    if not job_id and not (model.parent.name == "app_server" and model.parent.parent.name == "simulate_job"):
        raise ValueError(f"{model} records no job id, so the sites' state of that run cannot be found")
    data = model.read_bytes()
    atomic_write(job / "app" / RESUME_MODEL, lambda handle: handle.write(data))
    persistor = next((c for c in server.get("components", []) if c.get("id") == _workflow_args(server).get(
        "persistor_id", "persistor")), None)
    if persistor is None:
        raise ValueError("the job's config_fed_server.json has no persistor component")
    persistor.setdefault("args", {})["resume_from"] = RESUME_MODEL
    _workflow_args(server)["start_round"] = done
    server["num_rounds"] = total - done
    sim = not job_id or job_id == "simulate_job"
    # Each site's state of that run: in a simulator workspace by absolute path, else in the site's own workspace
    # under that job's id (POC and real deployments keep run folders).
    state = str(model.parents[3] / "{site}" / "simulate_job" / STATE_SUBDIR) if sim else f"{job_id}/{STATE_SUBDIR}"
    args = _executor_args(client)
    args["overrides"] = [*(args.get("overrides") or []), f"train.resume_from={state}"]
    atomic_write_json(config / "config_fed_server.json", server)
    atomic_write_json(config / "config_fed_client.json", client)
    return {"model": str(model), "rounds_done": done, "rounds_left": total - done, "job_id": job_id,
            "site_state": state}


def _workflow_args(server: dict) -> dict:
    for workflow in server.get("workflows", []):
        if workflow.get("path", "").endswith("ScatterAndGather"):
            return workflow.setdefault("args", {})
    raise ValueError("the job's config_fed_server.json has no ScatterAndGather workflow")

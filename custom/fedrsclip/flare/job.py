"""The FLARE job, built in Python with FLARE's job API (`FedJob`) from one typed `JobSpec`: plain, CKKS,
fault-tolerant, resumed, any algorithm. Every job setting is written once, here:

    server  ScatterAndGather(num_rounds, min_clients, start_round, timeouts) over PromptPersistor (the shared
            prompt; a resumed job's starting model), FullModelShareableGenerator, ValidatingAggregator (the gate and
            eq. 6) or CKKSAggregator, IntimeModelSelector, then GlobalModelEval through PromptModelLocator;
            ResultsCollector (the results file; it stops a job run with another number of sites than `sites`);
            TBAnalyticsReceiver.
    sites   FedRSCLIPExecutor(config="fedrsclip.yaml", overrides) on train and validate, TBWriter +
            ConvertToFedEvent; for CKKS the decryption filter first on task data and the encryption filter last on
            task results (as FLARE's own HE recipe, nvflare/app_opt/pt/recipes/fedavg_he.py).
    files   app/config/fedrsclip.yaml (the job's fedrsclip settings), app/custom/README.md (the app has a custom/
            folder, so FLARE treats it as "bring your own code" and does not check the fedrsclip.* components
            against its built-in class allow-list; the code itself is the installed package).

`write_job` exports it into a folder, never deleting anything it did not write (a marker file lists what it wrote);
`jobs/fedrsclip` is `write_job(JobSpec(), "jobs/fedrsclip")`, and a test checks that it still is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_common.widgets.intime_model_selector import IntimeModelSelector
from nvflare.app_common.workflows.global_model_eval import GlobalModelEval
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.app_opt.tracking.tb.tb_writer import TBWriter
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from ..atomic import atomic_write_json, to_json
from ..config import Config, ConfigError, load_config
from ..data.errors import DataError
from ..data.manifest import load_manifest
from ..data.modalities import parse_site_modalities
from ..data.synth import SCENES
from ..he import HEADER_KEY as HE_HEADER_KEY
from ..prompts import load_class_descriptions
from ..protocol import site_order
from ..results_file import RESULTS_FILE, load_results
from .aggregator import ValidatingAggregator
from .constants import GLOBAL_MODEL_FILE, RESUME_MODEL, STATE_SUBDIR, TASK_TRAIN, TASK_VALIDATE
from .executor import FedRSCLIPExecutor
from .he.aggregator import CKKSAggregator
from .he.filters import CKKSDecryptor, CKKSEncryptor
from .locator import PromptModelLocator
from .model_file import load_npz
from .persistor import PromptPersistor
from .results import ResultsCollector
from .upload_audit import UploadAudit

PACKAGE_FILES = Path(__file__).with_name("job_files")  # fedrsclip.yaml (the offline demo), README.md, custom/README.md
SETTINGS_FILE = "fedrsclip.yaml"  # in the app's config folder; the executor reads it
DESCRIPTIONS_FILE = "class_descriptions"  # + .yaml or .json: the job's copy of prompt.class_descriptions
MARKER = ".fedrsclip-job.json"  # in a folder write_job made: the files it wrote and their hashes
ANALYTICS_EVENT = "analytix_log_stats"
TASK_REQUEST_INTERVAL = 0.5  # seconds a site waits before asking again for a task (FLARE's default 2 s)


class JobError(ValueError):
    """A job cannot be made as asked; the message says which option to change."""


@dataclass(frozen=True)
class Resume:
    """Where a resumed job starts: an earlier run's global model and each site's state of that run."""

    model: Path  # the earlier run's FL_global_model.npz
    rounds_done: int  # rounds aggregated into it
    site_state: str  # train.resume_from: the folder holding each site's state ("{site}" becomes its name)
    job_id: str | None = None
    source: Path | None = None  # what the user named (a workspace, a server app folder or the file)
    encrypted: bool = False  # the model is CKKS ciphertext: only a --he job can continue it
    sites: tuple[str, ...] = ()  # the sites of that run, as its results file next to the model names them


@dataclass(frozen=True)
class JobSpec:
    """Everything that makes a fedrsclip FLARE job.

    sites: the number of sites the job is made for (min_clients unless `min_clients` is set; the synthetic demo
        data is partitioned over them: data.synthetic_sites). rounds: the total number of rounds (None: the
        settings' train.rounds). overrides: "section.key=value" fedrsclip settings for every site, on top of
        `settings` (a YAML file; None: the package's offline demo, job_files/fedrsclip.yaml). he: CKKS-encrypted
        updates. min_clients / train_timeout / wait_after_min: fault tolerance (README: Reliability).
        resume: continue an earlier run (`find_resume`). torch_threads: CPU threads per site process (1 suits many
        simulated sites on one machine; 0: all cores). audit: the upload audit widget at the sites (bench).
        modalities: a multi-modal federation (multimodal.modalities, e.g. "s2,s1": site-1 s2, site-2 s1, ...;
        "s2+s1" a site holding both): every site builds an adapter per modality and the aggregator averages each
        among its sites; with the offline demo's synthetic data, the sites get synthetic multi-modal scenes.
    """

    name: str = "fedrsclip"
    sites: int = 10
    rounds: int | None = None
    overrides: tuple[str, ...] = ()
    settings: Path | None = None
    he: bool = False
    min_clients: int | None = None
    train_timeout: int = 0
    wait_after_min: int = 0
    resume: Resume | None = None
    torch_threads: int = 1
    audit: bool = False
    modalities: str | None = None
    extra_files: tuple[Path, ...] = field(default=(), repr=False)  # internal: files the export adds (the resume model)

    def __post_init__(self) -> None:
        for name, low in (("sites", 1), ("train_timeout", 0), ("wait_after_min", 0), ("torch_threads", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise JobError(f"{name} must be an integer >= {low}; got {value!r}")
        if self.rounds is not None and (
            isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1
        ):
            raise JobError(f"rounds must be a positive integer; got {self.rounds!r}")
        if self.min_clients is not None and not (
            isinstance(self.min_clients, int) and 1 <= self.min_clients <= self.sites
        ):
            raise JobError(f"min_clients {self.min_clients!r} must be between 1 and the job's {self.sites} sites")
        if isinstance(self.overrides, str):
            raise JobError("overrides must be a list of 'section.key=value' strings")
        if self.resume is not None:  # the continued run must be the same federation, as encrypted as before
            if self.resume.encrypted != self.he:
                raise JobError(
                    f"{self.resume.model} is {'CKKS-encrypted' if self.resume.encrypted else 'plaintext'}"
                    f": resume it with a job made {'with' if self.resume.encrypted else 'without'} --he"
                )
            if self.resume.sites and len(self.resume.sites) != self.sites:
                raise JobError(
                    f"the run to resume had {len(self.resume.sites)} sites ({', '.join(self.resume.sites)})"
                    f" and this job is made for {self.sites}: give --sites {len(self.resume.sites)}"
                )
        if self.modalities is not None:  # the one parser: an empty list or item, or an item no site gets, refused
            try:
                parse_site_modalities(self.modalities, self.sites)
            except DataError as exc:
                raise JobError(f"{exc} (the job is made for --sites {self.sites})") from None
        object.__setattr__(self, "overrides", tuple(self.overrides))

    @property
    def settings_file(self) -> Path:
        return Path(self.settings) if self.settings else PACKAGE_FILES / SETTINGS_FILE

    @property
    def job_overrides(self) -> list[str]:
        """The executor's overrides: the sites' count for the synthetic partition, the multi-modal federation's
        settings (`modalities`), then the user's, then the resumed run's site state (later ones win)."""
        out = [f"data.synthetic_sites={self.sites}", *self.modality_overrides(), *self.overrides]
        if self.resume is not None:
            out.append(f"train.resume_from={self.resume.site_state}")
        return out

    def modality_overrides(self) -> list[str]:
        """multimodal.modalities; and when the settings use the offline demo's synthetic scenes, the synthetic
        multi-modal scenes instead (48 px: a multiple of 6, as their 60 m bands need)."""
        if self.modalities is None:
            return []
        out = [f"multimodal.modalities={self.modalities}"]
        if self.settings_file.is_file() and load_config(self.settings_file).data.source == "synthetic":
            out += ["data.source=synthetic-mm", "data.synthetic_size=48"]
        return out

    def config(self) -> Config:
        """The fedrsclip configuration every site starts from; ConfigError names a bad setting."""
        if not self.settings_file.is_file():
            raise JobError(f"the job's settings file {self.settings_file} does not exist")
        return load_config(self.settings_file, self.job_overrides)

    def total_rounds(self) -> int:
        return self.rounds if self.rounds is not None else self.config().train.rounds


def build_job(spec: JobSpec) -> FedJob:
    """The FedJob of `spec`. Refuses bad fedrsclip settings (ConfigError) and impossible options (JobError)."""
    cfg = spec.config()
    if cfg.dpac.negatives == "peers":
        raise JobError(
            "dpac.negatives: peers needs every other site's shared prompt each round, which a FLARE job "
            "does not send (fedrsclip run supports it); use dpac.negatives: classes"
        )
    total = spec.total_rounds()
    start = spec.resume.rounds_done if spec.resume else 0
    if start >= total:
        raise JobError(
            f"the run to resume has done {start} rounds and the job has {total}: nothing is left to run "
            "(give --rounds the total number of rounds)"
        )
    min_clients = spec.min_clients or spec.sites
    job = FedJob(name=spec.name, min_clients=min_clients)
    job.set_app_packages(["fedrsclip"])  # the installed package is the code: nothing is copied into custom/

    job.to_server({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})
    job.to_server(PromptPersistor(resume_from=RESUME_MODEL if spec.resume else ""), id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    # A round waits for every site (the workflow's min_clients); it is aggregated as long as one update passes the
    # gate, unless --min-clients asks for more (README: Reliability).
    floor = spec.min_clients or 1
    job.to_server(
        CKKSAggregator(min_clients=floor) if spec.he else ValidatingAggregator(min_clients=floor), id="aggregator"
    )
    job.to_server(IntimeModelSelector(key_metric="accuracy", weigh_by_local_iter=True), id="model_selector")
    job.to_server(PromptModelLocator(), id="model_locator")
    job.to_server(ResultsCollector(sites=spec.sites, min_clients=min_clients if spec.min_clients else 0), id="results")
    job.to_server(TBAnalyticsReceiver(tb_folder="tb_events", events=[f"fed.{ANALYTICS_EVENT}"]), id="tb_receiver")
    job.to_server(
        ScatterAndGather(
            min_clients=min_clients,
            num_rounds=total - start,
            start_round=start,
            wait_time_after_min_received=spec.wait_after_min,
            aggregator_id="aggregator",
            persistor_id="persistor",
            shareable_generator_id="shareable_generator",
            train_task_name=TASK_TRAIN,
            train_timeout=spec.train_timeout,
            ignore_result_error=True,
            allow_empty_global_weights=True,
            task_check_period=0.1,
        ),
        id="scatter_and_gather",
    )
    # A site that is gone must not hold the final evaluation for its default 6000 s either.
    job.to_server(
        GlobalModelEval(
            model_locator_id="model_locator",
            validation_task_name=TASK_VALIDATE,
            **({"validation_timeout": spec.train_timeout} if spec.train_timeout else {}),
        ),
        id="final_evaluation",
    )

    descriptions = class_descriptions_file(cfg)
    overrides = [*spec.job_overrides, *([f"prompt.class_descriptions={descriptions[1]}"] if descriptions else [])]
    job.to_clients(
        FedRSCLIPExecutor(
            config=SETTINGS_FILE,
            overrides=overrides,
            analytic_sender_id="analytic_sender",
            torch_threads=spec.torch_threads,
            **({"start_round": start} if start else {}),
        ),
        tasks=[TASK_TRAIN, TASK_VALIDATE],
    )
    job.to_clients(TBWriter(event_type=ANALYTICS_EVENT), id="analytic_sender")
    job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTICS_EVENT], fed_event_prefix="fed."), id="event_to_fed")
    if spec.audit:
        job.to_clients(UploadAudit(), id="upload_audit")
    if spec.he:  # decrypt first when the global model arrives, encrypt last before an update leaves
        job.to_clients(CKKSDecryptor(), tasks=[TASK_TRAIN, TASK_VALIDATE], filter_type=FilterType.TASK_DATA)
        job.to_clients(CKKSEncryptor(), tasks=[TASK_TRAIN], filter_type=FilterType.TASK_RESULT)
    job.add_file_to_clients(str(PACKAGE_FILES / "custom" / "README.md"), app_folder_type="custom")
    for path in spec.extra_files:
        job.add_file_to_clients(str(path), app_folder_type="config")
    return job


# ---- the job folder ----------------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path, marker: str = MARKER) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): _digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != marker
    }


def check_replaceable(
    out: Path,
    option: str = "--out",
    *,
    made_by: str = "fedrsclip job",
    marker: str = MARKER,
    replaced: Sequence[str] | None = None,
) -> None:
    """Refuse (JobError) to write into `out` unless it is absent, empty, or a folder `made_by` made (its `marker`
    file lists the files it wrote and their hashes) whose files it replaces are all as it wrote them: nothing the
    command did not write is ever deleted or overwritten.

    replaced: the files (paths relative to `out`) the command writes again; default: every file in `out`
    (`write_job` replaces the whole folder). option: the command's option the messages name (`--out`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise JobError(f"{option} {out} is a file, not a folder: choose another {option}")
    if not any(out.iterdir()):
        return
    if not (out / marker).is_file():
        raise JobError(
            f"{option} {out} is not empty and was not made by {made_by}: nothing in it is deleted; "
            f"choose a new or empty folder for {option}"
        )
    try:
        written = json.loads((out / marker).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobError(f"{option} {out}: its {marker} cannot be read ({exc}); choose another {option}") from None
    if replaced is None:
        present = _files(out, marker)
    else:  # a folder named as a file the command writes is in the way too
        present = {k: _digest(out / k) if (out / k).is_file() else "" for k in replaced if (out / k).exists()}
    changed = sorted(k for k in present if written.get(k) != present[k])
    if changed:
        raise JobError(
            f"{option} {out} holds files {made_by} did not write or that changed since "
            f"({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}): nothing in it is deleted; "
            f"move them away or choose another {option}"
        )


def mark_written(out: Path, names: Sequence[str], *, made_by: str, marker: str) -> None:
    """Record in `out`'s `marker` (made when missing) that `made_by` wrote the files `names` (paths relative to
    `out`) as they are now, so that `check_replaceable(out, made_by=made_by, marker=marker, ...)` lets it replace
    them later; written atomically."""
    try:
        files = json.loads((out / marker).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = {}
    files.update({k: _digest(out / k) for k in names})
    atomic_write_json(out / marker, {"made_by": made_by, "files": files})


def class_descriptions_file(cfg: Config) -> tuple[Path, str] | None:
    """(the file here, its name in the job's app/config/) for prompt.class_descriptions, or None.

    The descriptions shape the shared prompt, so every site must read the same texts: the job carries a copy, and
    a site resolves the setting's relative path against the job's config folder (`fedrsclip.flare.settings`).
    JobError when the file is not here or is not a mapping of class name to text."""
    if not cfg.prompt.class_descriptions:
        return None
    source = Path(cfg.prompt.class_descriptions).expanduser()
    if not source.is_file():
        raise JobError(
            f"prompt.class_descriptions: {source} does not exist here; the job carries a copy of the "
            "file to every site, so make the job where the file is"
        )
    classes = _known_classes(cfg)  # every class needs its text: checked now rather than at every site
    try:
        loaded = load_class_descriptions(source, classes)
    except ConfigError as exc:
        known = f" (checked against all of the job's {len(classes)} classes)" if classes else ""
        raise JobError(f"{exc}{known}") from None
    if not loaded:
        raise JobError(f"class descriptions file {source} is empty: map each class name to its description")
    return source, DESCRIPTIONS_FILE + (source.suffix.lower() if source.suffix.lower() == ".json" else ".yaml")


def _known_classes(cfg: Config) -> list[str] | None:
    """The job's class names where they are known when it is made: the synthetic scenes, or the classes of a
    manifest readable here; None otherwise (a manifest only the sites have)."""
    if cfg.data.source == "synthetic":
        return list(SCENES)[: cfg.data.synthetic_classes]
    manifest = Path(cfg.data.manifest).expanduser() if cfg.data.source == "manifest" and cfg.data.manifest else None
    if manifest is None or not manifest.is_file():
        return None
    try:
        return list(load_manifest(manifest)["classes"])
    except DataError:
        return None  # the sites report an unreadable manifest with their own path to it


def stage_files(spec: JobSpec, folder: Path) -> tuple[Path, ...]:
    """Copies, under `folder`, of the files the job's app/config/ gets: its settings as fedrsclip.yaml, the class
    descriptions when the settings name a file, and for a resumed job the earlier run's global model (the
    persistor's resume_from)."""
    config = folder / "config"
    config.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.settings_file, config / SETTINGS_FILE)
    files = [config / SETTINGS_FILE]
    descriptions = class_descriptions_file(spec.config())
    if descriptions is not None:
        shutil.copyfile(descriptions[0], config / descriptions[1])
        files.append(config / descriptions[1])
    if spec.resume is not None:
        shutil.copyfile(spec.resume.model, config / Path(RESUME_MODEL).name)
        files.append(config / Path(RESUME_MODEL).name)
    return tuple(files)


def write_job(spec: JobSpec, out: str | Path) -> Path:
    """Export `spec` into the folder `out` (made, or replaced when `check_replaceable` allows) and mark it as ours.
    The settings are checked before anything is written. Returns `out`."""
    out = Path(out).expanduser().absolute()
    if spec.resume is not None and spec.resume.source is not None:
        source = Path(spec.resume.source).expanduser().resolve()
        if out.resolve() == source or source in out.resolve().parents or out.resolve() in source.parents:
            raise JobError(
                f"--out {out} and the run to resume ({source}) overlap: writing the job there would "
                "delete the run it resumes; choose another --out"
            )
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        tmp = Path(tmp)
        job = build_job(dataclasses.replace(spec, extra_files=stage_files(spec, tmp / "files")))
        job.export_job(str(tmp / "export"))
        staged = tmp / "export" / spec.name
        shutil.copyfile(PACKAGE_FILES / "README.md", staged / "README.md")
        atomic_write_json(staged / MARKER, {"made_by": "fedrsclip job", "files": _files(staged)})
        if out.exists():
            check_replaceable(out)  # again: nothing may have changed since the first check
            old = tmp / "old"
            os.replace(out, old)
        os.replace(staged, out)
    return out


def job_settings(job: str | Path) -> dict[str, Any]:
    """An exported job's sites (min_clients), rounds, executor overrides and whether it is the CKKS variant."""
    config = Path(job) / "app" / "config"
    try:
        server = json.loads((config / "config_fed_server.json").read_text())
        client = json.loads((config / "config_fed_client.json").read_text())
    except (OSError, ValueError) as exc:
        raise JobError(f"{job} is not a FLARE job folder ({exc})") from None
    workflow = next(w for w in server["workflows"] if w["path"].endswith("ScatterAndGather"))["args"]
    aggregator = next(c for c in server["components"] if c["id"] == "aggregator")
    executor = next(e["executor"] for e in client["executors"] if e["executor"]["path"].endswith("FedRSCLIPExecutor"))
    return {
        "min_clients": workflow.get("min_clients"),
        "num_rounds": workflow.get("num_rounds"),
        "overrides": list(executor["args"].get("overrides") or []),
        "he": aggregator["path"].endswith("CKKSAggregator"),
    }


# ---- resuming ------------------------------------------------------------------------------------------------------
def find_global_model(previous: str | Path) -> Path:
    """An earlier run's FL_global_model.npz: the file, its server app folder, a simulator workspace, or a
    downloaded job result."""
    previous = Path(previous).expanduser().resolve()
    if previous.is_file():
        return previous
    for candidate in (
        previous / GLOBAL_MODEL_FILE,
        previous / "server" / "simulate_job" / "app_server" / GLOBAL_MODEL_FILE,
    ):
        if candidate.is_file():
            return candidate
    found = sorted(previous.rglob(GLOBAL_MODEL_FILE), key=lambda p: p.stat().st_mtime) if previous.is_dir() else []
    if not found:
        raise JobError(
            f"no {GLOBAL_MODEL_FILE} in {previous}: name the aborted run's server app folder "
            "(<simulator workspace>/server/simulate_job/app_server) or its model file"
        )
    return found[-1]


def find_resume(previous: str | Path) -> Resume:
    """Where to resume the run `previous` from: its last global model, the rounds in it, each site's state."""
    model = find_global_model(previous)
    try:
        weights, info = load_npz(model)
    except Exception as exc:  # truncated or foreign file
        raise JobError(f"cannot read the global model {model}: {exc}") from exc
    done, job_id = info.get("round"), info.get("job_id")
    if not isinstance(done, int) or not weights:
        raise JobError(f"{model} records no completed round; it cannot be resumed from")
    simulated = model.parent.name == "app_server" and model.parent.parent.name == "simulate_job"
    if not job_id and not simulated:
        raise JobError(f"{model} records no job id, so the sites' state of that run cannot be found")
    # Each site's state of that run: in a simulator workspace by absolute path, else in the site's own workspace
    # under that job's id (POC and real deployments keep run folders).
    sim = not job_id or job_id == "simulate_job"
    state = str(model.parents[3] / "{site}" / "simulate_job" / STATE_SUBDIR) if sim else f"{job_id}/{STATE_SUBDIR}"
    return Resume(
        model=model,
        rounds_done=done,
        site_state=state,
        job_id=job_id,
        source=Path(previous),
        encrypted=HE_HEADER_KEY in weights,
        sites=_run_sites(model.parent / RESULTS_FILE),
    )


def _run_sites(results_path: Path) -> tuple[str, ...]:
    """The sites a run's results file records (in any round, as having sent or as missing); () when unreadable."""
    try:
        rounds = load_results(results_path).get("rounds") or []
    except (OSError, ValueError):
        return ()
    names = {
        name
        for record in rounds
        if isinstance(record, dict)
        for name in [*(record.get("sites") or {}), *(record.get("missing") or [])]
        if isinstance(name, str)
    }
    return tuple(sorted(names, key=site_order))


def describe(spec: JobSpec) -> dict[str, Any]:
    """The job's settings as a printable summary (for the CLI)."""
    return json.loads(
        to_json(
            {
                "name": spec.name,
                "sites": spec.sites,
                "rounds": spec.total_rounds(),
                "min_clients": spec.min_clients or spec.sites,
                "he": spec.he,
                **({"modalities": spec.modalities} if spec.modalities else {}),
                "train_timeout": spec.train_timeout,
                "wait_after_min": spec.wait_after_min,
                "overrides": spec.job_overrides,
            },
            indent=None,
        )
    )

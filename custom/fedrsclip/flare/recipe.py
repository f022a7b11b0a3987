"""FedRSCLIP as a FLARE 2.9 recipe: the job of a `JobSpec` (fedrsclip.flare.job.build_job), run the way FLARE's own
examples run theirs (`recipe.execute(SimEnv(...))`, `PocEnv`, `ProdEnv`; `--export` writes the job folder).

    from fedrsclip.flare.job import JobSpec
    from fedrsclip.flare.recipe import FedRSCLIPRecipe
    from nvflare.recipe import SimEnv

    recipe = FedRSCLIPRecipe(JobSpec(sites=3, rounds=5))
    run = recipe.execute(SimEnv(num_clients=3, workspace_root="/tmp/fedrsclip-sim"))

`jobs/job.py` is the command-line script around it. Importing this module imports `nvflare.recipe`, which takes
`--export` and `--export-dir` out of `sys.argv` (FLARE's recipe flags): only the job script imports it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from nvflare.recipe.poc_env import PocEnv
from nvflare.recipe.sim_env import SimEnv
from nvflare.recipe.spec import ExecEnv, Recipe

from .he.context import prepare_simulator_contexts
from .job import JobError, JobSpec, build_job, stage_files
from .simulator import check_workspace


class FedRSCLIPRecipe(Recipe):
    """The FLARE job of `spec` as a Recipe; under SimEnv a CKKS job gets its contexts in the simulator workspace."""

    def __init__(self, spec: JobSpec | None = None):
        self.spec = spec or JobSpec()
        self._files = tempfile.TemporaryDirectory(prefix="fedrsclip-recipe-")  # the job's files until it is exported
        extra = stage_files(self.spec, Path(self._files.name))
        super().__init__(build_job(dataclasses.replace(self.spec, extra_files=extra)))

    def process_env(self, env: ExecEnv) -> None:
        if isinstance(env, SimEnv):
            if env.num_clients != self.spec.sites:
                raise JobError(
                    f"the job is made for {self.spec.sites} sites and SimEnv runs {env.num_clients}: give "
                    "both the same number (the data is partitioned over the job's sites)"
                )
            workspace = Path(env.workspace_root) / self.name
            try:  # SimEnv empties it: never over a folder holding what it did not make
                check_workspace(workspace)
            except ValueError as exc:
                raise JobError(f"SimEnv(workspace_root={env.workspace_root!r}): {exc}") from None
            if self.spec.he:  # the simulator has no provisioning: both contexts go into its workspace's startup/
                prepare_simulator_contexts(workspace)
        if isinstance(env, PocEnv) and env.num_clients != self.spec.sites:
            raise JobError(f"the job is made for {self.spec.sites} sites and PocEnv starts {env.num_clients}")
        super().process_env(env)

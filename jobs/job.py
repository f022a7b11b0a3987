"""FedRSCLIP as a FLARE 2.9 recipe: build the job in Python, then run it on the simulator (SimEnv), on a POC system
FLARE starts on this machine (PocEnv), or on a provisioned deployment (ProdEnv), as FLARE's own examples do.

    python jobs/job.py --sites 3 --rounds 5                    # SimEnv: the offline demo, 3 sites
    python jobs/job.py --sites 3 --he                          # the same, CKKS-encrypted (contexts made for SimEnv)
    python jobs/job.py --env prod --startup-kit KIT --sites 3 --set model.arch=ViT-B-16 \\
        --set model.pretrained=openai --set model.random_init=false  # sites name their weights in their own file
    python jobs/job.py --sites 3 --export --export-dir /tmp/jobs  # FLARE's flags: only write the job folder

The job is the one `fedrsclip job` writes (fedrsclip.flare.job.JobSpec); `fedrsclip report <workspace>` prints its
table. SimEnv empties its workspace (<workspace-root>/<name>) on every run, as `nvflare simulator` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedrsclip.flare.job import JobError, JobSpec
from fedrsclip.flare.recipe import FedRSCLIPRecipe  # first: FLARE's recipe module takes --export from sys.argv
from fedrsclip.results_file import find_results, load_results
from fedrsclip.tools.reporting.run_table import format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", choices=("sim", "poc", "prod"), default="sim", help="where to run (default: sim)")
    parser.add_argument("--name", default="fedrsclip", help="the job's name (default: %(default)s)")
    parser.add_argument("--sites", type=int, default=10, help="sites the job is made for (default: %(default)s)")
    parser.add_argument("--rounds", type=int, help="rounds (default: the settings' train.rounds)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a fedrsclip setting")
    parser.add_argument("--settings", help="the job's fedrsclip YAML (default: the offline demo's)")
    parser.add_argument("--he", action="store_true", help="CKKS-encrypted updates")
    parser.add_argument("--threads", type=int, help="SimEnv threads (default: one per site)")
    parser.add_argument(
        "--workspace-root",
        default="/tmp/nvflare/simulation",
        help="SimEnv: the run's workspace is <root>/<name> (default: %(default)s)",
    )
    parser.add_argument("--startup-kit", help="ProdEnv: the admin's startup kit folder")
    args = parser.parse_args(argv)

    spec = JobSpec(
        name=args.name,
        sites=args.sites,
        rounds=args.rounds,
        overrides=tuple(args.set),
        he=args.he,
        settings=Path(args.settings) if args.settings else None,
    )
    recipe = FedRSCLIPRecipe(spec)
    if args.env == "sim":
        from nvflare.recipe import SimEnv

        env = SimEnv(num_clients=args.sites, num_threads=args.threads, workspace_root=args.workspace_root)
    elif args.env == "poc":  # FLARE prepares and starts a fresh POC of its own (it replaces FLARE's POC workspace)
        from nvflare.recipe import PocEnv

        env = PocEnv(num_clients=args.sites, use_he=args.he)
        workspace = Path(env.poc_workspace)
        kept = [p.name for p in (workspace / "jobs", workspace / "results") if p.exists()]
        if kept:  # what poc/ made there (jobs, downloaded results) would be deleted with it
            parser.error(
                f"PocEnv deletes the POC workspace {workspace} before it starts a fresh POC, and it holds "
                f"{', '.join(kept)} (made by poc/): move them away or set NVFLARE_POC_WORKSPACE elsewhere"
            )
    else:
        from nvflare.recipe import ProdEnv

        if not args.startup_kit:
            parser.error("--env prod needs --startup-kit (the admin's kit of the provisioned deployment)")
        env = ProdEnv(startup_kit_location=args.startup_kit)
    try:
        run = recipe.execute(env)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run.get_result(clean_up=False)  # keep the workspace: its results, logs and the sites' prompts
    print(f"job {run.job_id or spec.name}: {run.get_status()}; result in {result}")
    if result:
        try:
            results = load_results(find_results(result))
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(format_table(results))
        return 0 if results.get("status") == "finished" else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())

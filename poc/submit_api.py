"""Submit the FLARE job with the FLARE Python API, wait for it, download its result and show the accuracy table.

    python poc/submit_api.py --kit <admin startup kit> --job <job folder> --out <results folder> [--timeout S]

The admin startup kit is the admin's folder (it holds startup/fed_admin.json, client.crt, client.key, rootCA.pem);
the user name is read from its certificate. Prints `job_id: ...` first and `results: <fedrsclip_results.json>` last;
exits 0 only when the job finished (FINISHED:COMPLETED) and its results file says `"status": "finished"`.
Works against a POC system (poc/submit.sh api) and a provisioned deployment alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kit", required=True, help="the admin's startup kit folder (e.g. .../prod_00/admin@nvidia.com)"
    )
    parser.add_argument("--job", required=True, help="the job folder to submit (holds meta.json)")
    parser.add_argument("--out", required=True, help="where the job's result is downloaded (a <job id> folder in it)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job (0: no limit)")
    args = parser.parse_args(argv)

    from nvflare.fuel.flare_api.flare_api import new_secure_session
    from nvflare.tool.kit.kit_config import resolve_admin_user_and_dir_from_startup_kit

    from fedrsclip.results_file import RESULTS_FILE, load_results
    from fedrsclip.tools.reporting.run_table import format_table

    username, kit = resolve_admin_user_and_dir_from_startup_kit(args.kit)
    session = new_secure_session(username, kit, timeout=60.0)
    try:
        job_id = session.submit_job(str(Path(args.job).resolve()))
        print(f"job_id: {job_id}", flush=True)
        meta = session.wait_for_job(job_id, timeout=args.timeout, poll_interval=5.0)
        status = meta.get("status")
        print(f"job {job_id}: {status}", flush=True)
        location = session.download_job_result(job_id, destination=str(Path(args.out).resolve()))
    finally:
        session.close()
    found = sorted(Path(location).rglob(RESULTS_FILE)) if location else []
    if not found:
        print(f"error: no {RESULTS_FILE} in the downloaded result {location}", file=sys.stderr)
        return 1
    results = load_results(found[0])
    print(format_table(results))
    print(f"results: {found[0]}")
    return 0 if status == "FINISHED:COMPLETED" and results.get("status") == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())

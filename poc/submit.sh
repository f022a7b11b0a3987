#!/usr/bin/env bash
# Submit the POC's job (made by poc/prepare.sh) one of three ways, wait for it, download its result.
#   poc/submit.sh [cli|admin|api] [JOB_FOLDER]      (default: cli, <ws>/jobs/fedrsclip)
#   cli    nvflare job submit / job wait / job download, with the project admin's startup kit
#   admin  the admin console: the job copied into the kit's transfer/ folder, `submit_job` typed into
#          startup/fl_admin.sh (its stdin); waits with `nvflare job wait`; `download_job` in the console
#   api    the FLARE Python API (poc/submit_api.py): new_secure_session, submit_job, wait_for_job,
#          download_job_result
# Prints the job id, the accuracy table and, last, `results: <path of fedrsclip_results.json>`;
# exits non-zero when the job did not finish. POC_JOB_TIMEOUT (seconds, default 3600) bounds the wait;
# POC_ADMIN=lead@nvidia.com submits as another admin (org-admin@nvidia.com is refused: no submit_job/byoc right).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
HOW="${1:-cli}"
[[ "$HOW" =~ ^(cli|admin|api)$ ]] || usage
JOB_DIR="$(cd "${2:-$JOB}" && pwd)"
KIT="$(admin_kit)"
TIMEOUT="${POC_JOB_TIMEOUT:-3600}"
mkdir -p "$RESULTS"

json_field() { "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][sys.argv[1]])' "$1"; }

show() {  # a downloaded job result folder: print the table and the results file; fail unless it finished
  local file
  file="$(find "$1" -name fedrsclip_results.json -print -quit)"
  [[ -n "$file" ]] || { echo "error: no fedrsclip_results.json in $1" >&2; exit 1; }
  "$PY" -m fedrsclip.cli report "$file" || true
  echo "results: $file"
  "$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("status") != "finished")' "$file"
}

case "$HOW" in
  cli)
    OUT="$("$NVFLARE" --format json job submit -j "$JOB_DIR" --startup-kit "$KIT" </dev/null)" \
      || { echo "error: nvflare job submit failed: $OUT" >&2; exit 1; }
    JOB_ID="$(json_field job_id <<<"$OUT")"
    echo "job_id: $JOB_ID"
    "$NVFLARE" job wait "$JOB_ID" --timeout "$TIMEOUT" --interval 5 --startup-kit "$KIT" </dev/null
    "$NVFLARE" job download "$JOB_ID" -o "$RESULTS" --force --startup-kit "$KIT" </dev/null
    show "$RESULTS/$JOB_ID"
    ;;
  admin)
    NAME="$(basename "$JOB_DIR")"
    if [[ -e "$KIT/transfer/$NAME" ]]; then  # replace only an earlier copy of a job `fedrsclip job` made
      [[ -f "$KIT/transfer/$NAME/.fedrsclip-job.json" ]] \
        || { echo "error: $KIT/transfer/$NAME exists and is not a fedrsclip job: move it away first" >&2; exit 1; }
      rm -rf "$KIT/transfer/$NAME"
    fi
    cp -r "$JOB_DIR" "$KIT/transfer/$NAME"
    OUT="$(printf 'submit_job %s\nbye\n' "$NAME" | "$KIT/startup/fl_admin.sh")"
    echo "$OUT"
    JOB_ID="$(sed -n 's/.*Submitted job: \([0-9a-f-]*\).*/\1/p' <<<"$OUT")"
    [[ -n "$JOB_ID" ]] || { echo "error: the admin console did not submit the job" >&2; exit 1; }
    echo "job_id: $JOB_ID"
    "$NVFLARE" job wait "$JOB_ID" --timeout "$TIMEOUT" --interval 5 --startup-kit "$KIT" </dev/null
    printf 'download_job %s\nbye\n' "$JOB_ID" | "$KIT/startup/fl_admin.sh"  # into the kit's transfer/
    rm -rf "${RESULTS:?}/$JOB_ID"
    mv "$KIT/transfer/$JOB_ID" "$RESULTS/$JOB_ID"
    show "$RESULTS/$JOB_ID"
    ;;
  api)
    exec "$PY" "$REPO/poc/submit_api.py" --kit "$KIT" --job "$JOB_DIR" --out "$RESULTS" --timeout "$TIMEOUT"
    ;;
esac

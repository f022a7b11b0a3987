# Shared settings of the poc/ scripts (sourced, not run).
#   NVFLARE_POC_WORKSPACE  the POC workspace (default: <repo>/workspaces/poc; `prepare.sh` REPLACES it)
#   FEDRSCLIP_VENV         the Python environment with nvflare and fedrsclip (default: <repo>/.venv; "" = PATH)
#   POC_ADMIN              the admin whose startup kit submits (default: the project admin, admin@nvidia.com)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NVFLARE_POC_WORKSPACE="${NVFLARE_POC_WORKSPACE:-$REPO/workspaces/poc}"
FEDRSCLIP_VENV="${FEDRSCLIP_VENV-$REPO/.venv}"
if [[ -n "$FEDRSCLIP_VENV" ]]; then
  # The sites' start.sh and fl_admin.sh run `python3` from PATH: it must be this environment's.
  export PATH="$FEDRSCLIP_VENV/bin:$PATH"
fi
NVFLARE="$(command -v nvflare)" || { echo "nvflare is not installed here: run 'make setup' or set FEDRSCLIP_VENV" >&2; exit 1; }
PY="$(command -v python3)"
WS="$NVFLARE_POC_WORKSPACE"
JOB="$WS/jobs/fedrsclip"   # the job variant prepare.sh generates for this POC (sites, rounds)
RESULTS="$WS/results"      # downloaded job results, one <job id> folder each

# The admin's startup kit (<ws>/<project>/prod_NN/<admin>), as `nvflare poc prepare` made it.
admin_kit() {
  "$PY" - "$WS" "${POC_ADMIN:-}" <<'PYEOF'
import pathlib, sys, yaml
ws, admin = pathlib.Path(sys.argv[1]), sys.argv[2]
if not (ws / "project.yml").is_file():
    sys.exit(f"no POC workspace at {ws}: run poc/prepare.sh first")
project = yaml.safe_load((ws / "project.yml").read_text())
admins = [p["name"] for p in project["participants"] if p.get("type") == "admin"]
if admin and admin not in admins:
    sys.exit(f"POC_ADMIN={admin} is not an admin of this POC ({', '.join(admins)})")
admin = admin or next(p["name"] for p in project["participants"] if p.get("role") == "project_admin")
prods = sorted((ws / project["name"]).glob("prod_*"))
print(prods[-1] / admin)
PYEOF
}

# Print the calling script's header comment (its usage) and exit 2.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }

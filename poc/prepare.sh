#!/usr/bin/env bash
# Prepare a POC deployment with N sites on this machine, and the job for it.
#   poc/prepare.sh N [--he] [--rounds R] [--set section.key=value ...]
# REPLACES $NVFLARE_POC_WORKSPACE (default workspaces/poc) and writes:
#   <ws>/example_project/prod_00/{server,site-1..N,admin@nvidia.com,...}   startup kits (localhost)
#   <ws>/jobs/fedrsclip      jobs/fedrsclip with min_clients = data.synthetic_sites = N (and R rounds, --set overrides)
# --he adds the TenSEAL contexts (HEBuilder) to the kits; the job itself is not changed by it.
# The POC server listens on localhost:8002 only (FLARE's POC would listen on all interfaces).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
SITES="$1"; shift
HE=(); ROUNDS=""; OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --he) HE=(-he) ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --set) OVERRIDES+=("${2:?--set needs section.key=value}"); shift ;;
    *) usage ;;
  esac
  shift
done

if [[ -e "$WS" && ! -f "$WS/project.yml" && -n "$(ls -A "$WS")" ]]; then
  echo "poc/prepare.sh: $WS exists and is not a POC workspace; refusing to replace it" >&2; exit 1
fi
"$NVFLARE" poc prepare -n "$SITES" "${HE[@]}" --force </dev/null
KIT="$(POC_ADMIN= admin_kit)"
PROD="$(dirname "$KIT")"

# Bind the server to the loopback interface: its service target is "server:8002", which FLARE binds on 0.0.0.0;
# a loopback target binds 127.0.0.1 (the POC's startup kits are not signed, so this file may be edited).
"$PY" - "$PROD/server/startup/fed_server.json" <<'PYEOF'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
for server in config["servers"]:
    server["service"]["target"] = "localhost:" + server["service"]["target"].rsplit(":", 1)[1]
json.dump(config, open(path, "w"), indent=2)
PYEOF

"$PY" - "$REPO/jobs/fedrsclip" "$JOB" "$SITES" "$ROUNDS" "${OVERRIDES[@]}" <<'PYEOF'
import sys
from fedrsclip.flare.job import job_settings, prepare_job
src, dst, sites, rounds, *overrides = sys.argv[1:]
prepare_job(src, dst, sites=int(sites), rounds=int(rounds) if rounds else None, overrides=overrides)
print(f"job for this POC: {dst} ({job_settings(dst)})")
PYEOF
echo "POC ready: $WS ($SITES sites; admin kit $KIT). Next: poc/start.sh"

#!/usr/bin/env bash
# Prepare a POC deployment with N sites on this machine, and the job for it.
#   poc/prepare.sh N [--he] [--rounds R] [--set section.key=value ...]
# REPLACES $NVFLARE_POC_WORKSPACE (default workspaces/poc) and writes:
#   <ws>/example_project/prod_00/{server,site-1..N,admin@nvidia.com,...}   startup kits (localhost)
#   <ws>/jobs/fedrsclip      `fedrsclip job` for N sites (min_clients = data.synthetic_sites = N; R rounds; --set)
#   <ws>/jobs/fedrsclip-he   with --he: the same job with CKKS-encrypted updates (submit.sh cli <ws>/jobs/fedrsclip-he)
# --he also puts CKKS contexts into the kits (fedrsclip he-context --kits: N=4096, one key; the sites get the
# secret key, the server only the keyless context).
# The POC server listens on localhost:8002 only (FLARE's POC would listen on all interfaces).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

[[ $# -ge 1 && "$1" =~ ^[1-9][0-9]*$ ]] || usage
SITES="$1"; shift
HE=0; ROUNDS=""; OVERRIDES=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --he) HE=1 ;;
    --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
    --set) OVERRIDES+=("${2:?--set needs section.key=value}"); shift ;;
    *) usage ;;
  esac
  shift
done

if [[ -e "$WS" && ! -f "$WS/project.yml" && -n "$(ls -A "$WS")" ]]; then
  echo "poc/prepare.sh: $WS exists and is not a POC workspace; refusing to replace it" >&2; exit 1
fi
"$NVFLARE" poc prepare -n "$SITES" --force </dev/null
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

if [[ "$HE" == 1 ]]; then
  "$PY" -m fedrsclip.cli he-context --kits "$PROD"
fi

# The job for this POC, made and checked by `fedrsclip job` (POC enforces min_clients: one job per site count).
JOB_ARGS=(--algorithm fedrsclip --sites "$SITES")
if [[ -n "$ROUNDS" ]]; then JOB_ARGS+=(--rounds "$ROUNDS"); fi
for override in "${OVERRIDES[@]}"; do JOB_ARGS+=(--set "$override"); done
"$PY" -m fedrsclip.cli job "${JOB_ARGS[@]}" --out "$JOB" --name fedrsclip
if [[ "$HE" == 1 ]]; then
  "$PY" -m fedrsclip.cli job "${JOB_ARGS[@]}" --he --out "$JOB-he" --name fedrsclip-he
fi
echo "POC ready: $WS ($SITES sites; admin kit $KIT). Next: poc/start.sh"

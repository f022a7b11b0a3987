#!/usr/bin/env bash
# Stop the POC system (aborting running jobs) and wait until its processes are gone.
#   poc/stop.sh [--clean]      --clean also deletes the POC workspace (nvflare poc clean)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
KIT="$(POC_ADMIN= admin_kit)"
PROD="$(dirname "$KIT")"

"$NVFLARE" poc stop </dev/null || echo "poc/stop.sh: 'nvflare poc stop' did not confirm the shutdown; waiting" >&2

# FLARE keeps each participant's process ids in pid.fl (the server/site process) and daemon_pid.fl (its restart
# loop); they disappear on a clean shutdown. Wait for that, then end what is left, by those ids.
alive() {
  local f pid
  for f in "$PROD"/*/pid.fl "$PROD"/*/daemon_pid.fl; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
  done
  return 0
}
for _ in $(seq 1 "${POC_STOP_WAIT:-90}"); do
  [[ -z "$(alive)" ]] && break
  sleep 1
done
left="$(alive)"
if [[ -n "$left" ]]; then
  echo "poc/stop.sh: still running after ${POC_STOP_WAIT:-90}s, terminating: $(echo $left)" >&2
  kill $left 2>/dev/null || true
  sleep 5
  left="$(alive)"
  [[ -z "$left" ]] || kill -9 $left 2>/dev/null || true
fi
rm -f "$PROD"/*/pid.fl "$PROD"/*/daemon_pid.fl "$PROD"/*/shutdown.fl
echo "POC stopped."
if [[ "${1:-}" == "--clean" ]]; then
  "$NVFLARE" poc clean </dev/null
fi

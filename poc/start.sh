#!/usr/bin/env bash
# Start the POC server and sites (prepared by poc/prepare.sh) in the background; returns once all are connected.
#   poc/start.sh [nvflare poc start options, e.g. --timeout 120]
# Logs: <ws>/example_project/prod_00/<participant>/{poc_console.log,log.txt}. Stop with poc/stop.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
admin_kit >/dev/null  # fails with a message when there is no POC workspace
exec "$NVFLARE" poc start --timeout "${POC_START_TIMEOUT:-120}" "$@" </dev/null

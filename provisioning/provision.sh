#!/usr/bin/env bash
# Provision provisioning/project.yml: one startup kit per participant (certificates, keys, HE contexts, signed).
#   provisioning/provision.sh [WORKSPACE] [PROJECT_YML]     (defaults: workspaces/provision, provisioning/project.yml)
# Kits: WORKSPACE/<project name>/prod_NN/<participant>/. Each run adds a prod_NN: the root CA (kept in
# WORKSPACE/<project name>/state/) is reused, but the HE context is new, so send a re-provisioned set to every
# participant together. Kits hold private keys: send each only to its participant, securely; never commit them.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKSPACE="${1:-$REPO/workspaces/provision}"
PROJECT="${2:-$REPO/provisioning/project.yml}"
VENV="${FEDRSCLIP_VENV-$REPO/.venv}"
[[ -z "$VENV" ]] || export PATH="$VENV/bin:$PATH"
mkdir -p "$WORKSPACE"
nvflare provision -p "$PROJECT" -w "$WORKSPACE" --force </dev/null
PROD="$(ls -d "$WORKSPACE"/*/prod_* | sort | tail -1)"
echo "startup kits: $PROD"
ls "$PROD"

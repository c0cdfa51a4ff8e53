#!/usr/bin/env bash
# Install the servers the test suite starts itself (PostgreSQL for the study tests). Idempotent.
set -euo pipefail

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo)
fi

if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if ! apt-cache show postgresql >/dev/null 2>&1; then
        "${sudo_cmd[@]}" apt-get update
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y postgresql
fi

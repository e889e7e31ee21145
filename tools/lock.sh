#!/usr/bin/env bash
# Refreshes requirements.lock on purpose (`make lock`): resolves pyproject.toml's ranges, with every
# extra the CPU environment installs, in a throw-away venv and records the exact versions
# (pip, setuptools and wheel included, since the editable install builds without isolation).
# Commit the new lock with the test run that shows it works.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-tf,plot,cluster,test,onednn}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$tmp/venv/bin/python" -m pip install -q -e ".[$EXTRAS]"
{
  echo "# Exact versions of the CPU environment: pyproject.toml's dependencies with extras [$EXTRAS]."
  echo "# Made by \`make lock\` (tools/lock.sh) with $("$tmp/venv/bin/python" --version) on $(date -u +%Y-%m-%d)."
  echo "# Installed by \`make venv\` (and so \`make train\`, \`make test\`, .ci/run); do not edit by hand."
  "$tmp/venv/bin/python" -m pip freeze --all --exclude-editable | LC_ALL=C sort -f
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"

#!/usr/bin/env bash
# Sets up everything the test suite needs and runs it: system tools (when root: age, zstd,
# umockdev, e2fsprogs, exfat-fuse, user-mode-linux, udisks2, ...), a virtualenv with the package
# and its test extras, then ruff, mypy --strict and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-system-deps
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
echo "== ruff"
.venv/bin/ruff check coldvault tests bench
echo "== mypy --strict"
.venv/bin/mypy --strict coldvault
echo "== pytest"
exec .venv/bin/python -m pytest -q -ra "$@"

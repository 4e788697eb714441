#!/usr/bin/env bash
# `make upgrade-check`: build a throwaway venv with the newest versions pyproject.toml allows (torch
# stays the pinned CPU build), run the test suite there, and print which packages moved against
# requirements/lock.txt and which tests broke. Touches neither .venv nor the lock.
# Options (environment): KEEP=1 keeps the venv; PYTEST_ARGS adds pytest arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
EXTRAS=zoo,retrieval,scale,web,hf,dev
tmp=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
venv="$tmp/venv"
log="$tmp/pytest.log"
source scripts/quiet_pip.sh
echo "upgrade-check: newest allowed versions into $venv"
python3 -m venv "$venv"
quiet_pip "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools
# torch pinned as in the lock (an unpinned torch pulls a CUDA build); everything else newest
quiet_pip "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
    --upgrade-strategy eager "torch==2.13.0" ".[$EXTRAS]" || { echo "upgrade-check: install failed"; exit 1; }
"$venv/bin/python" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    > "$tmp/newest.txt"
"$venv/bin/python" - requirements/lock.txt "$tmp/newest.txt" <<'PY'
import re, sys
def versions(path):
    out = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out
locked, newest = versions(sys.argv[1]), versions(sys.argv[2])
newest.pop("simexplain", None)
moved = [(n, locked[n], newest[n]) for n in sorted(locked) if n in newest and locked[n] != newest[n]]
added = sorted(set(newest) - set(locked))
dropped = sorted(set(locked) - set(newest))
print(f"upgrade-check: {len(moved)} of {len(locked)} locked packages moved")
for name, old, new in moved:
    major = old.split(".")[0] != new.split(".")[0]
    print(f"  {name:32s} {old:>14s} -> {new:<14s}{'  (major)' if major else ''}")
for name in added:
    print(f"  {name:32s} {'(new)':>14s} -> {newest[name]}")
for name in dropped:
    print(f"  {name:32s} {locked[name]:>14s} -> (no longer needed)")
PY
echo "upgrade-check: test suite on the newest versions"
# the installed wheel is tested (not src/): run from the repo with the venv's python
"$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} > "$log" 2>&1
status=$?
grep -E '^(FAILED|ERROR) ' "$log" | sed 's/^/  /'
tail -n 1 "$log"
if [ $status -eq 0 ]; then echo "upgrade-check: passed"; else echo "upgrade-check: broke (pytest exit $status; log $log)"; fi
[ "${KEEP:-0}" = 1 ] && echo "upgrade-check: venv kept at $venv"
exit $status

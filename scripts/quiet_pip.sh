# Sourced by the set-up scripts: run a pip command without this machine's pip configuration's
# warning about every missing local mirror folder; the command's exit status is kept.
quiet_pip() {
    "$@" 2>&1 | { grep -v '^WARNING: Location .* is ignored' || true; }
    return "${PIPESTATUS[0]}"
}

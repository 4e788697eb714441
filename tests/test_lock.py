"""The committed lock (requirements/lock.txt) against pyproject.toml and the running .venv: the
set-up installs exactly the lock, so `make test` and `make demo` install the same set on any day."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
# installed by the set-up besides the lock: the project itself (editable)
NOT_LOCKED = {"simexplain"}


def _lock() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every entry of the lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in entries, f"{current} is locked twice"
            entries[current] = (match.group(2), [])
            continue
        hashed = re.search(r"--hash=sha256:([0-9a-f]{64})", line)
        if hashed and current is not None:
            entries[current][1].append(hashed.group(1))
    return entries


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        named.extend(extra)
    return [Requirement(text) for text in named]


def test_every_pyproject_dependency_is_locked_within_its_range():
    locked = _lock()
    assert len(locked) > 50
    for requirement in _pyproject_requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} (pyproject.toml) is not in {LOCK.name}"
        version = locked[name][0]
        assert requirement.specifier.contains(Version(version), prereleases=True), (
            f"{name}=={version} in the lock is outside pyproject's {requirement}")
        for extra in requirement.extras:  # e.g. ray[data]: its extra's packages are locked too
            for text in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(text)
                marker = needed.marker
                if marker is not None and "extra" in str(marker) and marker.evaluate(
                        {"extra": extra}):
                    assert canonicalize_name(needed.name) in locked, (
                        f"{needed.name} ({requirement.name}[{extra}]) is not in the lock")


def test_every_lock_entry_is_exact_and_hashed():
    for name, (version, hashes) in _lock().items():
        assert hashes, f"{name}=={version} has no hash in {LOCK.name}"
        Version(version)  # exact, parseable
    assert _lock()["torch"][0] == "2.13.0+cpu", "torch must stay the pinned CPU build"


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()


@pytest.mark.skipif(not _in_project_venv(),
                    reason="the tests run outside the project's .venv (e.g. make upgrade-check)")
def test_the_venv_holds_exactly_the_lock():
    locked = _lock()
    # what pip installed into .venv (not what other packages put on sys.path at run time:
    # Ray adds its bundled psutil and colorama)
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    installed = {canonicalize_name(dist.metadata["Name"]): dist.version
                 for dist in importlib.metadata.distributions(path=sorted(site))}
    wrong = {name: (version, installed.get(name)) for name, (version, _) in locked.items()
             if installed.get(name) != version}
    assert not wrong, f"locked version vs installed (rerun the set-up: make setup): {wrong}"
    extra = sorted(set(installed) - set(locked) - NOT_LOCKED)
    assert not extra, f"installed but not in the lock: {extra}"


def test_a_changed_lock_makes_the_set_up_run_again():
    """make's view: with the lock newer than the set-up's stamp, `make setup` reruns
    scripts/setup.sh, which syncs .venv to the lock (pip-sync removes what it does not name)."""
    result = subprocess.run(["make", "-n", "-W", "requirements/lock.txt", "setup"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert "bash scripts/setup.sh" in result.stdout
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"pip-sync\b.*\"\$LOCK\"", setup), "setup.sh must sync .venv to the lock"
    assert "--require-hashes" in setup

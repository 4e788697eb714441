"""The wheel works outside the repository: built from this tree, installed into a fresh venv with
the locked versions, and run from another directory with an empty HOME."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "simexplain"


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # built from a copy of the tree: setuptools writes build/ and *.egg-info next to the sources
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # the set-up's own setuptools (locked), no download: the same build a user's pip makes
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(out), str(source)])
    wheels = list(out.glob("simexplain-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_holds_every_package_file(wheel):
    """Every file of src/simexplain (weights, static web files, templates, ...) is in the
    wheel, and nothing from outside the package (tests, data, the venv)."""
    expected = {str(path.relative_to(PACKAGE.parent)).replace(os.sep, "/")
                for path in PACKAGE.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package_files = {name for name in names if not name.startswith("simexplain-")}
    missing = sorted(expected - package_files)
    assert not missing, f"not in the wheel: {missing}"
    assert all(name.startswith("simexplain/") for name in package_files), sorted(package_files)
    assert any(name.endswith(".pt") for name in package_files)
    assert "simexplain/web/static/index.html" in package_files


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel and its core dependencies at the locked versions."""
    where = tmp_path_factory.mktemp("fresh")
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    constraints = where / "constraints.txt"  # the lock's versions without its hashes
    lines = [m.group(0) for m in re.finditer(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+",
                                               (ROOT / "requirements" / "lock.txt").read_text(),
                                               re.MULTILINE)]
    constraints.write_text("\n".join(lines) + "\n")
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-c", str(constraints), str(wheel)])
    home = where / "home"  # empty: nothing cached, no config
    home.mkdir()
    cwd = where / "elsewhere"
    cwd.mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "SIMEXPLAIN_DATA", "VIRTUAL_ENV")}
    env.update(HOME=str(home), PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    return {"python": python, "bin": env_dir / "bin", "cwd": cwd, "env": env, "home": home}


def _in_fresh(installed, args) -> subprocess.CompletedProcess:
    return _run(args, cwd=installed["cwd"], env=installed["env"], timeout=600)


def test_the_installed_package_is_the_wheel_not_the_repo(installed):
    result = _in_fresh(installed, [str(installed["python"]), "-c",
                                   "import simexplain; print(simexplain.__file__)"])
    location = Path(result.stdout.strip()).resolve()
    assert installed["bin"].parent.resolve() in location.parents, location
    assert ROOT not in location.parents


def test_models_pair_and_zoo_load_outside_the_repo(installed):
    models = _in_fresh(installed, [str(installed["bin"] / "simexplain"), "models"])
    assert re.search(r"^fmnist-gap\s", models.stdout, re.MULTILINE), models.stdout
    # the sample pair as the README fetches it (Fashion-MNIST from the Debian package), under
    # the empty HOME's data root
    script = (
        "import json, torch\n"
        "from simexplain import zoo\n"
        "a, b = zoo.entry('fmnist-gap').sample_pair()\n"
        "explainer = zoo.load('fmnist-gap')\n"
        "result = explainer.explain(a, b)\n"
        "with torch.no_grad():\n"
        "    e = zoo.model('fmnist-gap')(torch.rand(2, 1, 28, 28))\n"
        "print(json.dumps({'a': str(a), 'b': str(b), 'shape': list(e.shape),\n"
        "                  'norm': e.norm(dim=1).tolist(), 'score': result.score,\n"
        "                  'total': float(result.overall_a.sum())}))\n")
    loaded = json.loads(_in_fresh(installed, [str(installed["python"]), "-c", script])
                        .stdout.strip().splitlines()[-1])
    assert loaded["shape"] == [2, 64]
    assert all(abs(n - 1) < 1e-5 for n in loaded["norm"])
    assert abs(loaded["total"] - loaded["score"]) < 1e-5  # exact from the installed wheel
    for key in ("a", "b"):
        assert installed["home"] in Path(loaded[key]).parents and Path(loaded[key]).is_file()
    out = installed["cwd"] / "out"
    _in_fresh(installed, [str(installed["bin"] / "simexplain"), "pair", loaded["a"], loaded["b"],
                          "--model", "fmnist-gap", "--out", str(out)])
    result = json.loads((out / "result.json").read_text())
    assert -1.0 <= result["score"] <= 1.0
    assert (out / "overall_a.png").is_file() and (out / "overall_b.png").is_file()

"""Check the layer contracts of pyproject.toml's [tool.importlinter] with import-linter (`lint-imports`).

setuptools installs flows/, tasks/, storage/ and serving/ as sidestep.flows, sidestep.tasks, ...
([tool.setuptools.package-dir]), but import-linter finds a package's modules by walking its folder,
where those four are not. So the check runs on a staging copy of the package (hard links, made in a
moment) in which every mapped folder sits where its dotted name says. `make lint` and `make test` run
this file; the tests use its functions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Path]:
    """Dotted package name -> its folder, from [tool.setuptools.package-dir]."""
    cfg = tomllib.loads(pyproject.read_text())
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    return {name: (pyproject.parent / folder).resolve() for name, folder in mapping.items()}


def stage(dest: Path, pyproject: Path = REPO / "pyproject.toml") -> Path:
    """Copy (hard links where the file system allows) each mapped package folder to DEST/<dotted/path>;
    returns DEST, to be put on PYTHONPATH."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name, folder in sorted(package_dirs(pyproject).items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*name.split("."))
        if target.exists():  # a parent's copy may hold an unrelated folder of the same name
            shutil.rmtree(target)
        try:
            shutil.copytree(folder, target, ignore=ignore, copy_function=os.link)
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target, ignore=ignore)
    return dest


def lint_imports(config: Path, pythonpath: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run lint-imports with CONFIG on the packages found under PYTHONPATH (ahead of any installed copy)."""
    # the console script's own code, through this interpreter (its script may sit in another venv's bin/)
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
           "sys.exit(c())", "--no-cache", *extra, str(config)]
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(cmd, cwd=pythonpath, env=env, capture_output=True, text=True, timeout=300)


def check_project() -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="sidestep-layers-") as tmp:
        return lint_imports(REPO / "pyproject.toml", stage(Path(tmp)))


if __name__ == "__main__":
    res = check_project()
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    sys.exit(res.returncode)

"""The layer contracts (pyproject.toml [tool.importlinter]) hold for the project, and the check can fail:
the same contracts, on a throwaway package with the same layer names, flag a deliberately wrong import."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.import_contracts import REPO, check_project, lint_imports

ROOT = "sidestep"
FAKE = "layercheck"


def _contracts() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def _renamed(value):
    """The project's contract values with the root package renamed."""
    if isinstance(value, str):
        return re.sub(rf"\b{ROOT}\b", FAKE, value)
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    if isinstance(value, dict):
        return {k: _renamed(v) for k, v in value.items()}
    return value


def _toml(cfg: dict) -> str:
    """[tool.importlinter] as TOML (strings, booleans and lists of strings are all it holds)."""
    def val(v):
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {val(v)}" for k, v in cfg.items() if k != "contracts"]
    for c in cfg["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]", *(f"{k} = {val(v)}" for k, v in c.items())]
    return "\n".join(lines) + "\n"


def _layer_modules(cfg: dict) -> set[str]:
    """Every module the contracts name under the root package (optional layers, in parentheses, left out)."""
    names: set[str] = set()
    for c in cfg["contracts"]:
        for layer in c.get("layers", []):
            for m in re.split(r"[|:]", layer):
                m = m.strip()
                if not m.startswith("("):
                    names.add(m)
        names.update(c.get("source_modules", []))
    return names


def _fake_project(tmp_path, wrong: tuple[str, str] | None):
    """A package tree with the project's layer names under FAKE, one legitimate downward import per layer
    (cli -> flows -> tasks -> storage -> text), and WRONG = (importer, imported) added when given."""
    cfg = _renamed(_contracts())
    src = tmp_path / "src"
    for name in sorted(_layer_modules(cfg) | {FAKE}):
        d = src.joinpath(*name.split("."))
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").write_text("")
    imports = {"cli": "flows", "flows": "tasks", "tasks": "storage", "serving": "storage", "storage": "text"}
    if wrong:
        imports[wrong[0]] = wrong[1]
    for importer, imported in imports.items():
        target = imported if imported in ("prefect", "ray") else f"{FAKE}.{imported}"
        (src / FAKE / importer / "__init__.py").write_text(f"import {target}  # noqa: F401\n")
    config = tmp_path / "contracts.toml"
    config.write_text(_toml(cfg))
    return config, src


def test_the_project_keeps_its_layer_contracts():
    res = check_project()
    assert res.returncode == 0, res.stdout + res.stderr
    n = len(_contracts()["contracts"])
    assert f"Contracts: {n} kept, 0 broken." in res.stdout, res.stdout


def test_the_throwaway_project_without_a_wrong_import_passes(tmp_path):
    config, src = _fake_project(tmp_path, None)
    res = lint_imports(config, src)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(("wrong", "contract"), [
    (("storage", "flows"), "layers"),                # storage reaches up to the flows
    (("text", "storage"), "layers"),                 # the core reaches up to storage
    (("serving", "tasks"), "layers"),                # serving and tasks stay apart
    (("retrieval", "prefect"), "core-and-storage-import-no-prefect-no-ray"),
    (("storage", "ray"), "core-and-storage-import-no-prefect-no-ray"),
])
def test_a_wrong_import_breaks_the_contract_that_forbids_it(tmp_path, wrong, contract):
    config, src = _fake_project(tmp_path, wrong)
    res = lint_imports(config, src)
    assert res.returncode != 0, res.stdout
    name = next(c["name"] for c in _contracts()["contracts"] if c["id"] == contract)
    assert f"{name} BROKEN" in res.stdout, res.stdout
    assert "1 broken" in res.stdout, res.stdout
    importer = f"{FAKE}.{wrong[0]}"
    assert importer in res.stdout, res.stdout


def _installed_names() -> set[str]:
    """Every sub-package and top-level module of the installed namespace (sidestep.X), from the files."""
    from tests.import_contracts import package_dirs

    names = set()
    for name, folder in package_dirs().items():
        if name != ROOT:
            names.add(name)
            continue
        for p in folder.iterdir():
            if p.suffix == ".py" and p.stem not in ("__init__", "__main__"):
                names.add(f"{ROOT}.{p.stem}")
            elif (p / "__init__.py").exists():
                names.add(f"{ROOT}.{p.name}")
    return names


def test_every_module_of_the_namespace_sits_in_a_layer_and_is_installed():
    """A new sub-package or module outside the layers would escape the contracts; one missing from
    setuptools' package list would be missing from a normal (non-editable) install."""
    layered = {m.strip().strip("()") for c in _contracts()["contracts"] if c["type"] == "layers"
               for layer in c["layers"] for m in re.split(r"[:|]", layer)}
    names = _installed_names()
    assert names - layered == set(), "not in any layer of [tool.importlinter]"
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {n for n in names if (REPO / n.removeprefix(f"{ROOT}.")).is_dir()
                or (REPO / ROOT / n.removeprefix(f"{ROOT}.") / "__init__.py").exists()}
    assert packages - listed == set(), "not in [tool.setuptools] packages"

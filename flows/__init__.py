"""sidestep.flows: Prefect flows composing tasks, their deployments, and the command line.

Installed as ``sidestep.flows`` (setuptools package-dir); importing this folder as a top-level
``flows`` package is refused, so the generic name never shadows another project's package.
"""

if __name__ != "sidestep.flows":
    raise ImportError(f"this folder is the package sidestep.flows; import sidestep.flows, not {__name__}")

"""sidestep.tasks: Prefect tasks, a few lines each over the core and storage (retries, cache keys, tags).

Installed as ``sidestep.tasks`` (setuptools package-dir); importing this folder as a top-level
``tasks`` package is refused, so the generic name never shadows another project's package.
"""

if __name__ != "sidestep.tasks":
    raise ImportError(f"this folder is the package sidestep.tasks; import sidestep.tasks, not {__name__}")

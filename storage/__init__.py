"""sidestep.storage: the only code that knows paths (Parquet, versioned artifacts, atomic publish, DuckDB).

Installed as ``sidestep.storage`` (setuptools package-dir); importing this folder as a top-level
``storage`` package is refused, so the generic name never shadows another project's package.
"""

if __name__ != "sidestep.storage":
    raise ImportError(f"this folder is the package sidestep.storage; import sidestep.storage, not {__name__}")

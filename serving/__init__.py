"""sidestep.serving: the Ray Serve application (search, verify, recommend; hot reload; /metrics).

Installed as ``sidestep.serving`` (setuptools package-dir); importing this folder as a top-level
``serving`` package is refused, so the generic name never shadows another project's package.
"""

if __name__ != "sidestep.serving":
    raise ImportError(f"this folder is the package sidestep.serving; import sidestep.serving, not {__name__}")

"""DiffuseExpand's method code: ``diffuse_expand.py`` holds the paper's four stages."""

import importlib as _importlib


def __getattr__(name: str):
    """Submodules load on first attribute access, so configs can say ``scripts.<module>.<name>`` after importing the
    package (``"$from common.bundle import scripts"``)."""
    try:
        return _importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from exc

"""The CT semantic synthesis bundle's method code: ``semantic_synthesis.py`` holds the paper's algorithm (the guided
U-Net and its three conditionings, the hybrid loss, the learned-variance sampler); ``slices.py`` the data
preparation (axial slices, the extra body class); ``evaluation.py`` the paper's Tables 1-2 scoring."""

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

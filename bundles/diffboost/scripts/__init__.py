"""DiffBoost's method code: ``diffboost.py`` holds the paper's algorithm (the text + edge guided generator, its
training step and sampler, the generated versions, patch mixing); ``text_conditioning.py`` and ``edges.py`` its two
conditions; ``augmentations.py``, ``table_i.py`` and ``table_ii.py`` the paper's baselines and tables."""

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

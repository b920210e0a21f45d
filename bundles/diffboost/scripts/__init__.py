"""DiffBoost's method code: ``diffboost.py`` holds the paper's algorithm (the text + edge guided generator, its
training step and sampler, the generated versions, patch mixing); ``text_conditioning.py`` and ``edges.py`` its two
conditions; ``augmentations.py``, ``table_i.py`` and ``table_ii.py`` the paper's baselines and tables."""

from common.bundle import lazy_submodules

__getattr__ = lazy_submodules(__name__)  # configs say scripts.<module>.<name> after "from common.bundle import scripts"

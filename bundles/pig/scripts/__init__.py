"""PIG's method code: ``pig.py`` holds the paper's algorithm (the two denoisers, the training step of Alg. 1, the
sampler of Alg. 2); ``baselines.py`` the paper's comparison models (Tables 1-2)."""

from common.bundle import lazy_submodules

__getattr__ = lazy_submodules(__name__)  # configs say scripts.<module>.<name> after "from common.bundle import scripts"

"""The CT semantic synthesis bundle's method code: ``semantic_synthesis.py`` holds the paper's algorithm (the guided
U-Net and its three conditionings, the hybrid loss, the learned-variance sampler); ``slices.py`` the data
preparation (axial slices, the extra body class); ``evaluation.py`` the paper's Tables 1-2 scoring."""

from common.bundle import lazy_submodules

__getattr__ = lazy_submodules(__name__)  # configs say scripts.<module>.<name> after "from common.bundle import scripts"

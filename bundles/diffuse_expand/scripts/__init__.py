"""DiffuseExpand's method code: ``diffuse_expand.py`` holds the paper's four stages."""

from common.bundle import lazy_submodules

__getattr__ = lazy_submodules(__name__)  # configs say scripts.<module>.<name> after "from common.bundle import scripts"

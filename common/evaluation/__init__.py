"""Downstream segmentation evaluation (DESIGN §5), shared by every bundle.

* :mod:`~common.evaluation.segmenter`: build, train, predict, save and load the MONAI segmenter;
* :mod:`~common.evaluation.conditions`: what one row of the table trains on (objects a bundle may define);
* :mod:`~common.evaluation.scores`: per-image metrics and their conventions for empty masks;
* :mod:`~common.evaluation.protocol`: conditions x seeds x folds, resumable run files;
* :mod:`~common.evaluation.report`: statistics over runs, results.md and results.png.

Submodules load on first attribute access (``common.evaluation.protocol`` in a config needs only ``import common``).
"""

from __future__ import annotations

from common.bundle import lazy_submodules

__all__ = ["conditions", "protocol", "report", "scores", "segmenter"]

__getattr__ = lazy_submodules(__name__)

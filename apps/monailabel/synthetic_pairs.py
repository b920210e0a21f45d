"""Add N synthetic image + mask pairs from a bundle to a MONAI Label datastore, so its segmentation training starts
from them:

    python apps/monailabel/synthetic_pairs.py --datastore /data/my_studies --bundle bundles/pig --num_pairs 64 \
        --ckpt_path bundles/pig/models/model.pt --label_names '{"1": "lesion"}'

The bundle's own inference workflow (``configs/inference.json``, run with MONAI's ``ConfigWorkflow`` as ``python -m
monai.bundle run`` does) writes the pairs straight into the datastore folder in MONAI Label's layout: each image at
the top, its mask as ``labels/final/<name>`` (ground truth), and the datastore index (``datastore_v2.json``) marks them
``synthetic`` and names the classes. The datastore's own images and labels are kept; MONAI Label lists the synthetic
pairs as labelled beside them, and a training task over the labelled images uses both. Reruns add only missing pairs.

Call :func:`add_synthetic_pairs` from your MONAI Label app's ``init_datastore`` to do it when the server starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.errors import EXIT_INPUT_ERROR, InputError, find_input_error

__all__ = ["add_synthetic_pairs", "main"]


def add_synthetic_pairs(
    datastore: str | os.PathLike,
    bundle: str | os.PathLike,
    num_pairs: int,
    ckpt_path: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run ``bundle``'s inference with ``output_dir=datastore``; ``overrides`` are its config keys (``label_names``,
    ``seed``, ``num_inference_steps``, ...). Returns the generation summary (paths, pairs written)."""
    from monai.bundle import ConfigWorkflow

    from common.bundle import activate

    root = Path(bundle).resolve()
    config = root / "configs" / "inference.json"
    if not config.is_file():
        raise InputError(f"bundle '{bundle}' has no configs/inference.json; pass a bundle folder such as bundles/pig.")
    datastore = Path(datastore).resolve()
    datastore.mkdir(parents=True, exist_ok=True)
    if ckpt_path is not None:
        overrides["ckpt_path"] = str(Path(ckpt_path).resolve())
    activate(root)
    try:
        workflow = ConfigWorkflow(
            config_file=str(config), meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(root / "configs" / "logging.conf"), workflow_type="infer",
            output_dir=str(datastore), num_pairs=num_pairs, progress=False, **overrides,
        )  # fmt: skip
        workflow.initialize()
        summary = workflow.evaluator.run()
        workflow.finalize()
    finally:
        activate(None)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datastore", required=True, help="the MONAI Label datastore folder (studies)")
    parser.add_argument("--bundle", required=True, help="a bundle folder, e.g. bundles/pig")
    parser.add_argument("--num_pairs", type=int, required=True)
    parser.add_argument("--ckpt_path", default=None, help="the trained weights (default: the bundle's models/)")
    parser.add_argument("--label_names", default=None, help='class names, e.g. \'{"1": "lesion"}\' or classmap.json')
    args = parser.parse_args(argv)
    overrides = {}
    if args.label_names:
        text = args.label_names
        overrides["label_names"] = json.loads(text) if text.lstrip().startswith("{") else text
    try:
        summary = add_synthetic_pairs(args.datastore, args.bundle, args.num_pairs, args.ckpt_path, **overrides)
    except Exception as exc:  # MONAI wraps a config's errors: report the user's mistake, re-raise anything else
        error = find_input_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a bundle folder as people download it: ``python -m common.bundle_export bundles/pig dist/``.

Checks ``configs/metadata.json`` against the Model Zoo's schema (shipped in this package), then writes
``<output_dir>/<name>/`` with the bundle's ``configs/``, ``scripts/``, ``docs/`` and ``LICENSE`` (no trained
weights, outputs or caches) and ``<output_dir>/<name>.zip``, the Model Zoo's archive layout (one top-level folder named
after the bundle). Both are built under temporary names and renamed when complete, so a killed export leaves nothing
that looks finished. The exported folder runs anywhere once this library is pip-installed (``pip install .`` from the
repository; the bundle's ``metadata.json`` lists it with every other runtime dependency).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path

from common.errors import EXIT_INPUT_ERROR, InputError

__all__ = ["BUNDLE_CONTENT", "METADATA_SCHEMA", "export_bundle", "check_metadata", "main"]

# The Model Zoo's metadata schema (meta_schema_20240725.json, as published), shipped so the check runs offline
METADATA_SCHEMA = Path(__file__).resolve().parent / "schemas" / "meta_schema_20240725.json"
_SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"

BUNDLE_CONTENT = ("configs", "scripts", "docs", "LICENSE")
_REQUIRED = ("configs/metadata.json", "scripts/__init__.py", "docs/README.md", "LICENSE")
_SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


PACKAGED = Path(__file__).resolve().parent / "bundles"  # the bundles shipped in the wheel (setup.cfg package_data)


def _bundle_folder(bundle: str | os.PathLike) -> Path:
    """A bundle folder given as a path, or as a name under ``./bundles``, else one of the bundles this package ships
    (so ``pip install monai-paired-synthesis`` alone can export them)."""
    path = Path(bundle)
    for candidate in (path, Path("bundles") / path, PACKAGED / path):
        if candidate.is_dir():
            path = candidate
            break
    else:
        shipped = sorted(p.name for p in PACKAGED.iterdir()) if PACKAGED.is_dir() else []
        raise InputError(
            f"bundle '{bundle}' is neither a folder nor a name under ./bundles or of a shipped bundle "
            f"({', '.join(shipped) or 'none shipped'})."
        )
    missing = [item for item in _REQUIRED if not (path / item).exists()]
    if missing:
        raise InputError(f"bundle folder '{path}' lacks {missing[0]}; a bundle needs {', '.join(_REQUIRED)}.")
    return path.resolve()


def check_metadata(meta_file: str | os.PathLike) -> None:
    """Validate a bundle's ``metadata.json`` against the Model Zoo's schema, offline (MONAI's ``verify_metadata``)."""
    import jsonschema
    from monai.bundle import verify_metadata

    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(METADATA_SCHEMA), hash_val=_SCHEMA_MD5)
    except (ValueError, jsonschema.ValidationError) as error:
        reason = str(error.__cause__ or error).splitlines()[0]
        raise InputError(f"'{meta_file}' does not meet the Model Zoo's metadata schema: {reason}") from None


def export_bundle(bundle: str | os.PathLike, output_dir: str | os.PathLike, zip_archive: bool = True) -> Path:
    """Copy the bundle's content to ``output_dir/<name>`` (replacing an earlier export) and zip it; returns the
    folder."""
    source = _bundle_folder(bundle)
    check_metadata(source / "configs" / "metadata.json")
    output = Path(output_dir).resolve()
    if output == source or source in output.parents:
        raise InputError(f"output_dir '{output}' is inside the bundle '{source}'; choose a folder outside it.")
    name = source.name
    output.mkdir(parents=True, exist_ok=True)
    staging = output / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for item in BUNDLE_CONTENT:
        if (source / item).is_dir():
            shutil.copytree(source / item, staging / item, ignore=_SKIPPED)
        else:
            shutil.copy2(source / item, staging / item)
    target = output / name
    if zip_archive:
        partial_zip = output / f".{name}.zip.partial"
        with zipfile.ZipFile(partial_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staging.rglob("*")):
                archive.write(path, Path(name) / path.relative_to(staging))
        os.replace(partial_zip, output / f"{name}.zip")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.bundle_export", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a bundle folder (bundles/pig) or its name (pig)")
    parser.add_argument("output_dir", help="where <name>/ and <name>.zip are written")
    parser.add_argument("--no-zip", dest="zip_archive", action="store_false", help="write the folder only")
    args = parser.parse_args(argv)
    try:
        folder = export_bundle(args.bundle, args.output_dir, zip_archive=args.zip_archive)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What makes a bundle run from any folder: its root, its ``scripts`` package, its training config, its start-up.

A bundle is a folder ``<root>/{configs, scripts, docs, LICENSE}`` that people download, zip and run from inside it
(``python -m monai.bundle run --config_file configs/train.json``) or from elsewhere
(``--config_file bundles/pig/configs/train.json``). The configs therefore never assume a working directory:

* ``"bundle_root": "$common.bundle.bundle_root()"`` is the folder of the configs being run (:func:`bundle_root`);
* ``"$from common.bundle import scripts"`` in ``imports`` imports *that* bundle's ``scripts`` package (a module
  ``__getattr__``, PEP 562): its root goes first on ``sys.path`` and another bundle's ``scripts`` loaded earlier in
  the process is unloaded (the Model Zoo names every bundle's package ``scripts``; MONAI Label unloads it the same
  way). MONAI's config parser evaluates import statements before anything else, so this runs before any method code;
* :class:`TrainingConfig` gives inference and evaluation the network and settings the model was *trained* with:
  training saves its executed config beside the weights (:func:`save_training_config`), so a run with
  ``--channels [16,32,32]`` needs no repeated override at inference, and a bundle defines its network once;
* :func:`initialize` is every config's ``initialize`` step: one-line errors, the misspelt-key check, determinism.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import InputError, first_line

__all__ = [
    "bundle_root",
    "activate",
    "import_scripts",
    "initialize",
    "save_training_config",
    "TrainingConfig",
    "TRAINING_CONFIG_NAME",
    "lazy_submodules",
]

TRAINING_CONFIG_NAME = "training_config.json"
_active_root: Path | None = None


def _root_of_config(config_file: str | os.PathLike) -> Path:
    folder = Path(config_file).resolve().parent
    return folder.parent if folder.name == "configs" else folder


def _running_workflow() -> Any:
    """The MONAI ``ConfigWorkflow`` whose config is being resolved by the caller, if any (found on the call stack)."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def _monai_command_config() -> str | None:
    """The first config file of a ``monai.bundle`` command being run from Python (``verify_net_in_out``,
    ``ckpt_export``, ... as the Model Zoo's CI calls them), found on the call stack."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "monai.bundle.scripts":
            value = frame.f_locals.get("config_file")
            if isinstance(value, (list, tuple)) and value:
                value = value[0]
            if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
                return str(value)
        frame = frame.f_back
    return None


def _config_file_argument(argv: Sequence[str]) -> str | None:
    """The first config file of ``--config_file`` on a ``python -m monai.bundle <command>`` line, if any."""
    for i, word in enumerate(argv):
        value = None
        if word == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith("--config_file="):
            value = word.split("=", 1)[1]
        if value is not None:
            value = value.strip()
            if value.startswith("["):  # "['a.json','b.json']" as python-fire reads it
                value = value.strip("[]").split(",")[0].strip().strip("'\"")
            return value
    return None


def bundle_root() -> str:
    """The root folder of the bundle being run, whatever the working directory.

    In order: a root set with :func:`activate` (tests and benchmarks that parse configs directly); the configs' folder
    of the MONAI ``ConfigWorkflow`` being run (``python -m monai.bundle run``, MONAI Label, the Model Zoo's CI), minus
    a trailing ``configs``; the config file of a ``monai.bundle`` command called from Python (the Model Zoo's CI calls
    ``verify_net_in_out`` and ``ckpt_export`` so) or on a ``python -m monai.bundle`` command line; else the working
    directory (the Model Zoo's convention, ``bundle_root`` ".").
    """
    if _active_root is not None:
        return str(_active_root)
    workflow = _running_workflow()
    if workflow is not None and getattr(workflow, "config_root_path", None) is not None:
        return str(_root_of_config(Path(workflow.config_root_path) / "x.json"))
    config_file = _monai_command_config() or _config_file_argument(sys.argv)
    if config_file:
        return str(_root_of_config(config_file))
    return os.getcwd()


def activate(root: str | os.PathLike | None) -> None:
    """Make ``root`` the bundle that :func:`bundle_root` and ``from common.bundle import scripts`` see (None: back to
    finding it from the running workflow); imports its ``scripts`` package."""
    global _active_root
    _active_root = None if root is None else Path(root).resolve()
    if _active_root is not None:
        import_scripts(_active_root)


def import_scripts(root: str | os.PathLike) -> Any:
    """The ``scripts`` package of the bundle at ``root``, imported from there (another bundle's is unloaded first)."""
    root = Path(root).resolve()
    if not (root / "scripts" / "__init__.py").is_file():
        raise InputError(f"bundle root '{root}' has no scripts/ package (scripts/__init__.py); is it a bundle folder?")
    loaded = sys.modules.get("scripts")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().parent != root / "scripts":
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]
    entry = str(root)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()
    return importlib.import_module("scripts")


def lazy_submodules(package: str):
    """A module ``__getattr__`` (PEP 562) that imports ``<package>.<name>`` on first access, so a config can say
    ``scripts.<module>.<name>`` (or ``common.<module>.<name>``) after importing the package alone."""

    def __getattr__(name: str) -> Any:
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from exc

    return __getattr__


def __getattr__(name: str) -> Any:
    if name == "scripts":  # "$from common.bundle import scripts" in a bundle config
        return import_scripts(bundle_root())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def initialize(seed: int | None = None, distributed: bool = False) -> bool:
    """Every config's ``initialize``: join the ``torchrun`` process group (``distributed``), print user errors as one
    line with exit status 2 (:func:`common.errors.install_excepthook`), refuse misspelt command-line keys
    (:func:`common.overrides.check_override_keys`) and, with a ``seed``, make the run deterministic."""
    from common.errors import install_excepthook
    from common.overrides import check_override_keys

    if distributed:
        from common.distributed import init_process_group

        init_process_group()
    install_excepthook()
    check_override_keys()
    if seed is not None:
        from monai.utils import set_determinism

        set_determinism(seed=seed)
    return True


def save_training_config(ckpt_dir: str | os.PathLike) -> str | None:
    """Write the executed training config (the config files merged, command-line overrides applied) to
    ``<ckpt_dir>/training_config.json``, atomically and on the main process only, so that :class:`TrainingConfig`
    rebuilds exactly this network. Returns the path, or None outside a running MONAI workflow."""
    from common.distributed import is_main_process
    from common.writers import atomic_write_bytes

    workflow = _running_workflow()
    if workflow is None:
        return None
    path = os.path.join(os.fspath(ckpt_dir), TRAINING_CONFIG_NAME)
    if is_main_process():
        config = {k: v for k, v in workflow.parser.get().items() if k != workflow.parser.meta_key}
        os.makedirs(os.fspath(ckpt_dir), exist_ok=True)
        atomic_write_bytes(path, json.dumps(config, indent=2, default=str).encode("utf-8"))
    return path


class TrainingConfig:
    """The training config a model was trained with: ``<ckpt_dir>/training_config.json`` when training saved it
    (:func:`save_training_config`), else the bundle's ``configs/<name>`` (e.g. for weights trained elsewhere, or
    to build the untrained network).

    ``config[key]`` is the parsed value of ``key`` (a number, a list, or an instantiated component such as
    ``network_def`` or ``noise_scheduler``). Inference configs read the network and its settings from here, so they
    never repeat them.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, name: str = "train.json", root: str | os.PathLike | None = None):
        from monai.bundle import ConfigParser

        saved = Path(ckpt_dir) / TRAINING_CONFIG_NAME
        self.source = saved if saved.is_file() else Path(root or bundle_root()) / "configs" / name
        if not self.source.is_file():
            raise InputError(f"training config '{self.source}' does not exist.")
        self.parser = ConfigParser()
        try:
            self.parser.read_config(str(self.source))
        except (OSError, ValueError) as exc:
            raise InputError(f"training config '{self.source}' could not be read ({first_line(exc)}).") from exc
        if saved.is_file():
            self.parser["bundle_root"] = str(root or bundle_root())  # the saved one may name another machine's folder

    def __getitem__(self, key: str) -> Any:
        if key not in self.parser:
            raise InputError(f"training config '{self.source}' has no key '{key}'.")
        return self.parser.get_parsed_content(key)

    def __repr__(self) -> str:
        return f"TrainingConfig({str(self.source)!r})"

"""Reject command-line overrides that name no key of the bundle's configs.

``python -m monai.bundle run --max_epoch 5`` (a typo of ``max_epochs``) silently adds an unused key and trains with
the default: on a CPU that can cost an hour before anyone notices. Each workflow's ``initialize`` calls
:func:`check_override_keys`, which re-parses the command line the way MONAI's CLI does (python-fire) and names the
first key that no config file defines. A new keyword argument of an existing component
(``--network_def#guider#dropout_cattn``) stays allowed: the component's constructor rejects a wrong one itself.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.scripts import create_workflow, run

from common.errors import InputError

# arguments consumed by MONAI's ``run`` / ``create_workflow`` / ``ConfigWorkflow`` themselves, not config overrides
WORKFLOW_ARGUMENTS = frozenset(
    name
    for function in (run, create_workflow, ConfigWorkflow.__init__)
    for name, parameter in inspect.signature(function).parameters.items()
    if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) and name != "self"
)


def _is_bundle_run(argv: Sequence[str]) -> bool:
    main = os.path.normpath(argv[0]) if argv else ""
    return main.endswith(os.path.join("monai", "bundle", "__main__.py")) and len(argv) > 1 and argv[1] == "run"


def parse_run_arguments(command: Sequence[str]) -> dict:
    """The keyword arguments python-fire gives ``monai.bundle.scripts.run`` for ``command`` (the words after "run")."""
    import fire

    captured: dict = {}

    def capture(*args, **kwargs):  # python-fire maps "--key value" and "--key=value" to kwargs, as for run()
        bound = inspect.signature(run).bind_partial(*args, **kwargs)
        captured.update(bound.arguments.pop("override", {}))
        captured.update(bound.arguments)

    fire.Fire(capture, command=list(command), name="run")
    return captured


def _overrides_and_config(arguments: dict) -> tuple[dict, ConfigParser | None]:
    """The config overrides among ``arguments`` (``run``'s keyword arguments, ``args_file`` merged in) and the
    config files they apply to (None when no ``config_file`` is given)."""
    merged = dict(ConfigParser.load_config_file(arguments["args_file"])) if arguments.get("args_file") else {}
    merged.update(arguments)
    config_file = merged.get("config_file")
    overrides = {k: v for k, v in merged.items() if k not in WORKFLOW_ARGUMENTS and not k.startswith("_meta_")}
    if not config_file:
        return overrides, None
    parser = ConfigParser()
    parser.read_config(config_file)
    return overrides, parser


def unknown_override_keys(arguments: dict) -> list[str]:
    """Keys of ``arguments`` (``run``'s keyword arguments, ``args_file`` merged in) that no config file defines."""
    overrides, parser = _overrides_and_config(arguments)
    if parser is None:
        return []
    return [key for key in overrides if key not in parser and not _adds_argument(parser, key)]


def dropped_none_overrides(arguments: dict) -> list[str]:
    """Keys set to None on the command line (``--key None``) whose config value is not None: MONAI's ``run`` drops
    None-valued overrides (``update_kwargs(ignore_none=True)``), so the config's value would be used silently."""
    overrides, parser = _overrides_and_config(arguments)
    if parser is None:
        return []
    return [key for key, value in overrides.items() if value is None and key in parser and parser[key] is not None]


def _adds_argument(parser: ConfigParser, key: str) -> bool:
    """True for ``component#new_argument``: a new keyword for an existing ``_target_`` component, which that
    component's constructor checks itself (an unknown top-level key is used by nothing, so it is always a mistake)."""
    path = ReferenceResolver.split_id(key)  # "#" and "::" both separate levels
    if len(path) < 2:
        return False
    parent = ReferenceResolver.sep.join(path[:-1])
    if parent not in parser:
        return False
    node = parser[parent]
    return isinstance(node, dict) and "_target_" in node


def check_override_keys(argv: Sequence[str] | None = None) -> bool:
    """Raise :class:`InputError` naming a ``--key`` of ``monai.bundle run`` that no config file defines, or a
    ``--key None`` that MONAI would drop while the config holds another value.

    Does nothing when the process is not ``python -m monai.bundle run`` (e.g. a workflow built from Python).
    Returns True so configs can call it in ``initialize``.
    """
    argv = sys.argv if argv is None else argv
    if not _is_bundle_run(argv):
        return True
    arguments = parse_run_arguments(argv[2:])
    unknown = unknown_override_keys(arguments)
    if unknown:
        raise InputError(
            f"unknown config key '--{unknown[0]}' on the command line: no config file defines it "
            "(check the spelling; a new key must be added to a config file)"
        )
    dropped = dropped_none_overrides(arguments)
    if dropped:
        raise InputError(
            f"'--{dropped[0]} None' would be ignored: MONAI's bundle run drops overrides whose value is None, so the "
            "config's value would be used; set it to null in an overlay config file instead"
        )
    return True

"""Run bundle configs the way ``python -m monai.bundle run --config_file ... --key value`` does, and return what a
subprocess would: exit status, stdout, stderr.

By default the stage runs inside the test process: each ``python -m monai.bundle`` subprocess pays MONAI's import
(5-15 s on 2 cores), which across the suite's ~80 stages cost minutes. The command line is reproduced faithfully: the
words are parsed by python-fire as the CLI parses them, ``sys.argv`` is the CLI's (the bundles' misspelt-key check
reads it), the bundle's ``logging.conf`` logs into the captured stdout, and a user error anywhere in the exception
chain becomes the CLI's single ``error:`` line with status 2 (through :func:`common.errors.find_input_error`, as the
bundles' excepthook does). Tests about the process itself (the excepthook's real exit, signals, file-size limits,
``torchrun``) pass ``in_process=False`` or use :func:`bundle_command`.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from tests.shared_data import REPO

__all__ = ["bundle_command", "run_bundle"]


def bundle_command(config_files: Sequence[str | Path], *overrides: str, python: Sequence[str] = ()) -> list[str]:
    """The user's command line: ``python -m monai.bundle run --config_file "['a.json','b.json']" *overrides``."""
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    return [*(python or [sys.executable]), "-m", "monai.bundle", "run", "--config_file", files, *overrides]


def run_bundle(
    config_files: Sequence[str | Path],
    *overrides: str,
    in_process: bool = True,
    timeout: float = 300,
    env: dict | None = None,
    preexec_fn=None,
) -> subprocess.CompletedProcess:
    """Run the configs (later files override earlier keys) with CLI-style overrides; never raises for a failed run."""
    command = bundle_command(config_files, *overrides)
    if not in_process or env is not None or preexec_fn is not None:
        return subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=preexec_fn
        )
    return _run_here(command)


def _run_here(command: list[str]) -> subprocess.CompletedProcess:
    import monai.bundle.__main__
    from monai.bundle.scripts import run

    from common.bundle import activate
    from common.errors import EXIT_INPUT_ERROR, find_input_error
    from common.overrides import parse_run_arguments

    words = command[command.index("run") + 1 :]
    kwargs = parse_run_arguments(words)  # what python-fire hands run() for these words
    argv = [monai.bundle.__main__.__file__, "run", *words]  # what the bundle's own checks read from sys.argv

    stdout, stderr = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level, saved_hook, saved_argv = root.handlers[:], root.level, sys.excepthook, sys.argv
    returncode = 0
    try:
        # logging.conf's StreamHandler(sys.stdout) is created inside the redirect, so the run's log is captured
        with contextlib.chdir(REPO), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                sys.argv = argv
                activate(None)  # the bundle is the one of the configs being run, as in a fresh process
                run(**kwargs)
            except Exception as exc:  # noqa: BLE001 - reported as the CLI would report it
                user_error = find_input_error(exc)
                if user_error is None:
                    traceback.print_exc()
                    returncode = 1
                else:
                    sys.stderr.write(f"error: {user_error}\n")
                    returncode = EXIT_INPUT_ERROR
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.excepthook, sys.argv = saved_hook, saved_argv
        gc.collect()
    return subprocess.CompletedProcess(command, returncode, stdout.getvalue(), stderr.getvalue())

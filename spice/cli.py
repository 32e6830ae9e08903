"""`spice` command line: `spice <command> ...`, each command owned by the module that implements it.

Bad input (a missing or malformed data file, checkpoint, thresholds JSON or config) ends every
command with one line on stderr, `spice <command>: error: <file>: <problem>`, and exit status 2.
`--debug` (anywhere on the line) shows the full traceback instead.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("spice.data.cli", "download, verify or synthesise datasets"),
    "train": ("spice.train", "train SPICE (two stages) from a YAML config"),
    "tune": ("spice.tune", "grid-search the clustering thresholds on validation events"),
    "evaluate": ("spice.evaluate", "evaluate a checkpoint on a dataset into a per-event table"),
}
BAD_INPUT = 2  # exit status for bad input, as argparse uses for bad arguments

# Readers whose errors do not name the file they read, and the options that name it (checkpoints
# name themselves: spice.train.read_checkpoint wraps torch.load).
_UNNAMED = (("json", ("--thresholds", "--dataset")), ("yaml", ("--config",)))


def _raised_in(exc: BaseException) -> set[str]:
    """Names of the modules whose frames the exception passed through."""
    names, tb = set(), exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return names


def _is_bad_input(exc: BaseException) -> bool:
    """DataError and the other ValueErrors (bad config, thresholds, JSON), missing/unreadable files
    (OSError), download failures and YAML syntax."""
    if isinstance(exc, (ValueError, OSError, EOFError)):
        return True
    import yaml

    from spice.data.download import DownloadError
    return isinstance(exc, (yaml.YAMLError, DownloadError))


def _option(argv: list[str], names) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def error_line(command: str, exc: BaseException, argv: list[str]) -> str:
    """`spice <command>: error: <file>: <problem>` on one line; the file comes from the error itself
    (OSError.filename, DataError's path) or, for readers that do not say, from the option naming it."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    path = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
    if isinstance(exc, OSError) and path is not None:
        message = f"{path}: {exc.strerror or message}"
    else:
        modules = _raised_in(exc)
        for module, options in _UNNAMED:
            path = _option(argv, options)
            if path and path not in message and any(m == module or m.startswith(module + ".") for m in modules):
                message = f"{path}: {message}"
                break
    return f"spice {command}: error: {message}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] not in COMMANDS:
        print("usage: spice [--debug] {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<10} {helptext}")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, args = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.main(args) or 0)
    except Exception as exc:
        if debug or not _is_bad_input(exc):
            raise
        print(error_line(command, exc, args), file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

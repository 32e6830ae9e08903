"""`spice` command line: `spice <command> ...`, each command owned by the module that implements it."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "data": ("spice.data.cli", "download, verify or synthesise datasets"),
    "train": ("spice.train", "train SPICE (two stages) from a YAML config"),
    "tune": ("spice.tune", "grid-search the clustering thresholds on validation events"),
    "evaluate": ("spice.evaluate", "evaluate a checkpoint on a dataset into a per-event table"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: spice {" + ",".join(COMMANDS) + "} ...\n")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:<10} {helptext}")
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""`rlhf` command: one entry point, sub-commands contributed by each package.

Each package's ``cli`` module exposes ``add_commands(subparsers)`` and must import its heavy
dependencies (vllm, torch, celery) inside the handlers, so `rlhf --help` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ["common.cli", "serving.cli", "trainer.cli", "worker.cli", "demo.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="Online RLHF service")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # package not written yet
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = args.handler(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

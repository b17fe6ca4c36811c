"""Sub-commands that only need the shared contracts."""
from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random Llama (+tokenizer, chat template)")
    p.add_argument("path")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_tiny_model)


def _tiny_model(args) -> int:
    from common.tiny_model import build_tiny_model
    print(build_tiny_model(args.path, seed=args.seed))
    return 0

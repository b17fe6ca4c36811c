"""Sub-commands that only need the shared contracts."""
from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random Llama (+tokenizer, chat template)")
    p.add_argument("path")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_tiny_model)
    p = sub.add_parser("export", help="write preference data (OpenAI DPO / TRL / raw votes) as JSONL")
    p.add_argument("--format", required=True, choices=["openai-dpo", "trl", "jsonl"])
    p.add_argument("--since", default=None, help="unix seconds, ISO date/time, or an age (7d, 12h)")
    p.add_argument("--version", default=None, help="only votes on answers of this model version")
    p.add_argument("--out", "-o", default="-", help="output file (default: stdout)")
    p.set_defaults(handler=_export)


def _tiny_model(args) -> int:
    from common.tiny_model import build_tiny_model
    print(build_tiny_model(args.path, seed=args.seed))
    return 0


def _export(args) -> int:
    import sys

    from common import export, ops
    from common.settings import Settings

    settings = Settings()
    try:
        client = ops.client(settings)
        client.ping()
    except Exception as exc:  # redis down: the snapshot files alone are still exported
        print(f"[export] Redis unavailable ({exc}); exporting snapshot files only", file=sys.stderr)
        client = None
    try:
        lines = export.export_lines(settings, args.format, args.since, args.version, client)
    except export.ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    n = 0
    try:
        for line in lines:
            out.write(line)
            n += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"[export] {n} lines ({args.format})", file=sys.stderr)
    return 0

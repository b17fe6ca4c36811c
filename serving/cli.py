"""``rlhf serve``: run the API server (uvicorn, one process embedding the engine)."""
from __future__ import annotations


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve the current policy (OpenAI-compatible API)")
    p.add_argument("--model", help="model folder to publish as v0 when the registry is empty "
                                   "(default: RLHF_MODEL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replica-id", default=None, help="default: RLHF_REPLICA_ID or host:port")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(handler=_serve)


def _serve(args) -> int:
    # vLLM starts its engine process with spawn; `rlhf` is a console script whose __main__ is
    # guarded, so the child does not re-run this handler.
    import logging

    import uvicorn

    from common.settings import Settings
    from serving.app import create_app

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(Settings(), model=args.model, replica_id=args.replica_id, port=args.port)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level=args.log_level, timeout_graceful_shutdown=10, access_log=False)
    return 0

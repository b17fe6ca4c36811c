"""``rlhf serve``: run the API server (uvicorn, one process embedding the engine).
``rlhf ingest``: run the feedback routes alone in N uvicorn worker processes (no engine)."""
from __future__ import annotations

import ipaddress
import sys


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serve the current policy (OpenAI-compatible API)")
    p.add_argument("--model", help="model folder to publish as v0 when the registry is empty "
                                   "(default: RLHF_MODEL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replica-id", default=None, help="default: RLHF_REPLICA_ID or host:port")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback address with no API keys "
                        "(RLHF_API_KEYS / RLHF_TRUSTED_API_KEYS): anyone who reaches the port "
                        "can generate and vote as any user")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("ingest", help="serve the feedback routes alone (/v1/feedback*, "
                                      "/v1/comparisons) in N processes, without the engine")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=2,
                   help="uvicorn worker processes sharing the port (about one core each)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback address with no API keys "
                        "(anyone who reaches the port can vote as any user)")
    p.set_defaults(handler=_ingest)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve to anything


def insecure_bind_refusal(host: str, settings, insecure: bool) -> str | None:
    """Why `rlhf serve` / `rlhf ingest` must not start (None: it may)."""
    from serving.auth import is_open

    if insecure or is_loopback(host) or not is_open(settings):
        return None
    return (f"refusing to listen on {host!r} without API keys: set RLHF_API_KEYS (and/or "
            "RLHF_TRUSTED_API_KEYS), listen on 127.0.0.1, or pass --insecure to serve an open "
            "API on the network anyway")


def _start(command: str, args):
    """Settings checked, the bind refused or allowed, logging set up: (settings, uvicorn) or
    None after printing why not (shared by `rlhf serve` and `rlhf ingest`)."""
    import logging

    from common.settings import Settings

    settings = Settings()  # validates the environment before anything starts
    refusal = insecure_bind_refusal(args.host, settings, args.insecure)
    if refusal:
        print(f"rlhf {command}: {refusal}", file=sys.stderr)
        return None
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.insecure and not is_loopback(args.host):
        logging.getLogger(f"rlhf.{command}").warning(
            "--insecure: listening on %s with %s", args.host,
            "no API keys (open API)" if insecure_bind_refusal(args.host, settings, False)
            else "API keys configured")
    return settings, uvicorn


def _serve(args) -> int:
    # vLLM starts its engine process with spawn; `rlhf` is a console script whose __main__ is
    # guarded, so the child does not re-run this handler.
    started = _start("serve", args)
    if started is None:
        return 2
    settings, uvicorn = started
    from serving.app import create_app

    app = create_app(settings, model=args.model, replica_id=args.replica_id, port=args.port)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level=args.log_level, timeout_graceful_shutdown=10, access_log=False)
    return 0


def _ingest(args) -> int:
    if args.workers < 1:
        print("rlhf ingest: --workers must be at least 1", file=sys.stderr)
        return 2
    started = _start("ingest", args)
    if started is None:
        return 2
    _, uvicorn = started
    # A factory import string, not an app object: uvicorn's workers are separate processes
    # (spawned), each builds its own app, Redis pool and quota client from the environment.
    uvicorn.run("serving.ingest_app:create_ingest_app", factory=True, workers=args.workers,
                host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level=args.log_level, timeout_graceful_shutdown=10, access_log=False)
    return 0

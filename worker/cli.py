"""`rlhf worker|beat|versions|status|retrain|deploy|rollback|forget`."""
from __future__ import annotations

import json
import os
import sys


def add_commands(sub) -> None:
    p = sub.add_parser("worker", help="start a Celery worker (training + control queues)")
    p.add_argument("--queues", default=None, help="default: this deployment's training,control")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--loglevel", default="info")
    p.set_defaults(handler=_worker)

    p = sub.add_parser("beat", help="start Celery beat (retrain triggers)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(handler=_beat)

    p = sub.add_parser("versions", help="list model versions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_versions)

    p = sub.add_parser("status", help="served version, replicas, pipeline, queue, feedback")
    p.set_defaults(handler=_status)

    p = sub.add_parser("retrain", help="queue a retrain pipeline now")
    p.set_defaults(handler=_retrain)

    p = sub.add_parser("deploy", help="serve VERSION on every replica")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="deploy even if its gate failed")
    p.set_defaults(handler=_deploy)

    p = sub.add_parser("rollback", help="go back to the version served before the current one")
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("forget", help="erase USER's answers and feedback from Redis and snapshot files")
    p.add_argument("user", help="the end-user id as the product sent it (the `user` field)")
    p.add_argument("--pseudonym", action="store_true",
                   help="USER is already the stored pseudonym (u_...), not the raw id")
    p.set_defaults(handler=_forget)


def _celery(args_list: list[str]) -> int:
    # exec: signals (Ctrl-C, SIGTERM from the demo/tests) go straight to Celery itself.
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    os.execv(celery, [celery, "-A", "worker.celery_app:app", *args_list])


def _worker(args) -> int:
    from common.keys import KEYS
    queues = args.queues or f"{KEYS.training_queue},{KEYS.control_queue}"
    return _celery(["worker", "-Q", queues, "--concurrency", str(args.concurrency),
                    "--pool", "prefork", "--loglevel", args.loglevel, "-n", f"rlhf-{os.getpid()}@%h",
                    "--without-gossip", "--without-mingle"])  # see worker/celery_app.py


def _beat(args) -> int:
    from common.settings import Settings
    schedule = os.path.join(str(Settings().data_dir), "celerybeat-schedule")
    os.makedirs(os.path.dirname(schedule) or ".", exist_ok=True)
    return _celery(["beat", "--loglevel", args.loglevel, "-s", schedule])


def _settings():
    from common.settings import Settings
    return Settings()


def _versions(args) -> int:
    from common import ops
    rows = ops.list_versions(_settings())
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'':2}{'version':8} {'parent':8} {'algorithm':10} {'gate':6} {'rm gain':>8} {'kl/parent':>9} "
          f"{'kl/anchor':>9}  note")
    for r in rows:
        gm = (r["metrics"] or {}).get("gate", {})
        gate = {True: "pass", False: "FAIL", None: "-"}[r["gate_passed"]]
        print(f"{'*' if r['current'] else ' ':2}{r['version']:8} {str(r['parent'] or '-'):8} "
              f"{str(r.get('algorithm') or '-'):10} {gate:6} {_f(gm.get('rm_gain')):>8} "
              f"{_f(r.get('kl_to_parent')):>9} {_f(r.get('kl_to_anchor')):>9}  "
              f"{r['note'] or '; '.join(r['gate_reasons'])}")
    return 0


def _f(x) -> str:
    return f"{x:+.3f}" if isinstance(x, (int, float)) else "-"


def _status(args) -> int:
    from common import ops
    print(json.dumps(ops.status(_settings()), indent=2, default=str))
    return 0


def _retrain(args) -> int:
    from common import ops
    print(ops.request_retrain(_settings(), reason="operator"))
    return 0


def _deploy(args) -> int:
    from common import ops
    from common.registry import RegistryError
    try:
        print(json.dumps(ops.deploy(_settings(), args.version, force=args.force), default=str))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _rollback(args) -> int:
    from common import ops
    from common.registry import RegistryError
    try:
        print(json.dumps(ops.rollback(_settings()), default=str))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _forget(args) -> int:
    from common import privacy
    settings = _settings()
    try:
        if args.pseudonym:
            out = privacy.forget_pseudonym(settings, args.user)
        else:
            out = privacy.forget_user(settings, args.user)
    except (ValueError, privacy.Busy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0

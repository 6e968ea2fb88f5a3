"""``python -m studio jobs list|cancel|resume``: the background training jobs from a shell."""

from __future__ import annotations

import json
import time

from studio.jobs.service import get_service
from studio.workspace import Workspace


def add_cli(sub) -> None:
    p = sub.add_parser("jobs", help="list, cancel or resume background training jobs")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser("list", help="all jobs, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    c = jsub.add_parser("cancel", help="cancel a queued or running job (saves a checkpoint)")
    c.add_argument("id", type=int)
    r = jsub.add_parser("resume", help="queue a failed or cancelled job again")
    r.add_argument("id", type=int)
    p.set_defaults(func=_cmd_jobs)


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _list(svc, as_json: bool) -> int:
    svc.reconcile()
    jobs = svc.list()
    if as_json:
        for j in jobs:
            print(json.dumps(j.as_dict(), default=str))
        return 0
    if not jobs:
        print("No jobs yet.")
        return 0
    print(f"{'id':>4}  {'state':<9}  {'created':<16}  run")
    for j in jobs:
        extra = f"  ({j.error})" if j.error else ""
        print(f"{j.id:>4}  {j.state:<9}  {_fmt_time(j.created):<16}  {j.run_name}{extra}")
    return 0


def _cmd_jobs(args) -> int:
    svc = get_service(Workspace())
    if args.jobs_command == "list":
        return _list(svc, args.json)
    if args.jobs_command == "cancel":
        job = svc.cancel(args.id)
        print(f"job {job.id}: {'cancelled' if job.state == 'cancelled' else 'stop requested'}")
        return 0
    job = svc.resume(args.id)
    changed = svc.reconcile()
    started = any(j.id == job.id and j.state == "running" for j in changed)
    print(f"job {job.id}: {'resumed (running)' if started else 'queued'}")
    return 0

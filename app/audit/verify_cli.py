"""`consent-ledger audit verify --tenant KEY`: run or resume the tenant's verification here.

Starts a run (or finds the one going), carries it in this process when no worker holds it, or
follows the worker that does, until it finishes. On a terminal: one line rewritten in place
(percentage, counts, rate, ETA); otherwise a plain summary at the end. Exit status: 0 valid,
1 broken (each broken subject and log break listed), 2 missing configuration, no such tenant or
the database lost (the run resumes from its last step), 130 interrupted (likewise).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, TextIO

import asyncpg

from app.audit import verify_job
from app.audit.verification_schemas import read
from app.core.db import connect

FOLLOW_EVERY = 0.5  # seconds between two reads of a run another worker holds
TENANT = "SELECT 1 FROM tenants WHERE id = $1"
GET = "SELECT * FROM verification_runs WHERE id = $1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--batch-subjects", type=int, default=None,
                        help="subjects per step of a new run (default VERIFICATION_BATCH_SUBJECTS)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="worker processes (default: one per CPU for a large tenant; 1: none)")


class Bar:
    """A carriage-return progress line on a terminal; nothing elsewhere (the summary says it all)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.tty, self.shown = out, out.isatty(), 0.0

    def show(self, view: dict[str, Any], force: bool = False) -> None:
        now = time.monotonic()
        if not self.tty or (not force and now - self.shown < 0.1):
            return
        self.shown = now
        p = view["progress"]
        rate = f"{p['events_per_second']:,.0f} events/s" if p["events_per_second"] else "-- events/s"
        eta = f"ETA {p['eta_seconds']:.0f} s" if p["eta_seconds"] is not None else "ETA --"
        width = 30
        filled = int(width * p["percent"] / 100)
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {p['percent']:5.1f}%  subjects {p['subjects_done']:,}/"
                f"{p['subjects_total']:,}  events {p['events_done']:,}/{p['events_total']:,}  {rate}  {eta}  "
                f"broken {view['broken_total']:,}  ({view['stage']})")
        self.out.write(line.ljust(120))
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def summary(view: dict[str, Any]) -> str:
    p, log = view["progress"], view["log"] or {}
    state = "VALID" if view["valid"] else "BROKEN"
    lines = [f"tenant {view['tenant']!r}: {state} (verification {view['id']})",
             f"  {p['subjects_done']:,} subjects, {p['events_done']:,} events, {p['duty_records_done']:,} duty records; "
             f"{log.get('checkpoints_verified', 0)} of {log.get('checkpoints', 0)} checkpoints verified against a log "
             f"of {log.get('tree_size', 0):,} entries"
             + (f"; {p['events_per_second']:,.0f} events/s" if p["events_per_second"] else "")]
    for subject in view["broken"]:
        lines.append(f"  broken subject {subject['subject_id']}: {', '.join(subject['kinds'])} "
                     f"({subject['breaks_total']} breaks; first: {subject['breaks'][0]['detail']})")
    if view["broken_total"] > len(view["broken"]):
        lines.append(f"  ... {view['broken_total'] - len(view['broken'])} more broken subjects not listed")
    for brk in log.get("breaks", []):
        lines.append(f"  log: {brk['kind']}: {brk['detail']}")
    return "\n".join(lines)


async def _verify(settings: Any, proof: Any, args: argparse.Namespace, out: TextIO) -> int:
    write = await connect(settings.database_url, settings, "consent-ledger-audit-verify")
    try:
        if await write.fetchval(TENANT, args.tenant) is None:
            print(f"no tenant {args.tenant!r}", file=sys.stderr)
            return 2
        run, _ = await verify_job.start(write, args.tenant, "cli", args.batch_subjects or
                                        settings.verification_batch_subjects)
        bar = Bar(out)
        owner = verify_job.owner_name()
        reader = await connect(settings.database_url, settings, "consent-ledger-audit-verify")
        try:
            async def step(_: dict[str, Any]) -> None:
                bar.show(read(await reader.fetchrow(GET, run["id"])))

            while True:
                row = await write.fetchrow(GET, run["id"])
                if row["status"] == "finished":
                    break
                bar.show(read(row), force=True)
                await verify_job.carry_on(write, settings, proof, owner=owner, tenant=args.tenant, on_step=step,
                                          jobs=args.jobs)
                row = await write.fetchrow(GET, run["id"])
                if row["status"] != "finished":  # a worker holds it: follow
                    await asyncio.sleep(FOLLOW_EVERY)
        finally:
            await reader.close()
        bar.show(read(row), force=True)
        bar.end()
    finally:
        await write.close()
    view = read(row)
    print(summary(view), file=out)
    return 0 if view["valid"] else 1


def run(args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout) -> int:
    from app.proof.cli import database_and_keys

    proof = database_and_keys(settings)
    if proof is None:
        return 2
    try:
        return asyncio.run(_verify(settings, proof, args, out))
    except KeyboardInterrupt:
        print("\ninterrupted: the run stays where its last step left it; run the command again to resume",
              file=sys.stderr)
        return 130
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"verification not finished ({type(exc).__name__}: {exc}); run the command again to resume",
              file=sys.stderr)
        return 2

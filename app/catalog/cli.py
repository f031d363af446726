"""`consent-ledger catalog reclassify`: move a purpose to another legal basis from now on."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from datetime import UTC, datetime

from app.core.settings import Settings

COMMANDS = ("catalog",)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p_catalog = commands.add_parser("catalog", help="the tenant's catalog (DATABASE_URL required)")
    actions = p_catalog.add_subparsers(dest="action", required=True)
    p = actions.add_parser(
        "reclassify", help="move a purpose to another legal basis from now on (e.g. a pre-2023 \"required\" "
                           "consent to contract, PIPA Art. 15(1)4); recorded with who and why, old events untouched")
    p.add_argument("--tenant", required=True)
    p.add_argument("--purpose", required=True, help="the purpose's key")
    p.add_argument("--basis", required=True, help="consent, contract, legal_obligation, vital_interest, "
                                                  "legitimate_interest or public_task")
    p.add_argument("--category", help="for consent: its category (default: the purpose's)")
    p.add_argument("--reason", required=True, help="why, for the catalog's history")
    p.add_argument("--from", dest="effective_from", help="ISO 8601 instant with offset from which it applies "
                                                          "(default: now; a later date is applied by the worker)")
    p.add_argument("--by", help="who (default: cli:<os user>)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from app.auth.deps import Principal
    from app.catalog import purposes, schemas
    from app.core import actor
    from app.core.db import create_engine, session_factory
    from app.core.errors import ProblemError

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        body = schemas.PurposeReclassify(legal_basis=args.basis, category=args.category, reason=args.reason,
                                         effective_from=args.effective_from)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"{'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    by = args.by or f"cli:{getpass.getuser()}"

    async def go() -> int:
        actor.current.set(by)  # the catalog history's "who" (app/core/actor.py)
        engine = create_engine(settings.database_url, settings)
        try:
            async with session_factory(engine)() as session, session.begin():
                principal = Principal(tenant=args.tenant, sub=by, scopes=frozenset({"catalog:write"}))
                try:
                    purpose = await purposes.reclassify_purpose(session, principal, args.purpose, body, changed_by=by)
                except ProblemError as exc:
                    reasons = "; ".join(f"{e.field}: {e.reason}" for e in exc.errors)
                    print(f"{exc.detail}{f' ({reasons})' if reasons else ''}", file=sys.stderr)
                    return 1
                if body.effective_from is not None and body.effective_from > datetime.now(UTC):
                    print(f"{args.tenant}/{purpose.key}: {args.basis} from {body.effective_from.isoformat()} "
                          "(the worker applies it then); events recorded before are unchanged")
                    return 0
                category = f" ({purpose.category})" if purpose.category else ""
                print(f"{args.tenant}/{purpose.key}: now {purpose.legal_basis}{category}, from now on; "
                      "events recorded before are unchanged")
                return 0
        finally:
            await engine.dispose()

    return asyncio.run(go())

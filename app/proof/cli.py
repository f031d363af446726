"""`consent-ledger audit bundle` and `consent-ledger verify-bundle` (issue 8 point 4).

app/cli.py adds these with `add_commands(subparsers)` and hands the parsed arguments of a command
in COMMANDS to `run(args, settings)`. `python -m app.proof.cli ...` runs them on their own.

    consent-ledger audit bundle --tenant T --out FILE     needs DATABASE_URL and the keys
    consent-ledger audit verify --tenant T                app/audit/verify_cli.py (its exit status there)
    consent-ledger verify-bundle FILE [--public-key KEY] [--trusted-checkpoint CP] [--json]

verify-bundle needs neither a database nor any secret. Exit status: 0 valid, 1 breaks found (each
printed as kind, where, detail), 2 unreadable input (bundle, key or checkpoint file; a bundle past
the verifier's size limits) or, never silently, a verifier that could not finish. With neither
--public-key nor --trusted-checkpoint it warns that the bundle's own keys were trusted.
`audit bundle`: 0 written, 1 the log no longer extends its signed checkpoints (nothing written),
2 missing configuration or no such tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

COMMANDS = ("audit", "verify-bundle")


def add_commands(subparsers: Any) -> None:
    p_audit = subparsers.add_parser("audit", help="audit bundles (a tenant's whole ledger, checkable offline) and "
                                                  "tenant-wide verification")
    actions = p_audit.add_subparsers(dest="audit_action", required=True)
    p_bundle = actions.add_parser(
        "bundle", help="write a tenant's audit bundle (ZIP): events, notices, disclosures, signed checkpoints, "
                       "public keys (DATABASE_URL and the signing key required)")
    p_bundle.add_argument("--tenant", required=True)
    p_bundle.add_argument("--out", required=True, type=Path, help="the ZIP file to write")
    from app.audit import verify_cli

    verify_cli.add_arguments(actions.add_parser(
        "verify", help="verify every subject of a tenant and its checkpoints against the log, resuming a run "
                       "already going; exit 0 valid, 1 broken, 2 configuration (DATABASE_URL and the keys required)"))
    p_verify = subparsers.add_parser(
        "verify-bundle", help="check an audit bundle offline (no database, no secret); exit 0 valid, 1 breaks, "
                              "2 unreadable")
    p_verify.add_argument("file", type=Path)
    p_verify.add_argument("--public-key", type=Path,
                          help="verify checkpoints with ONLY these keys (PEM, JWK or JWKS: list every key the service "
                               "used), not the bundle's jwks.json")
    p_verify.add_argument("--trusted-checkpoint", type=Path,
                          help="a checkpoint saved earlier (JSON from CHECKPOINT_DIR or a webhook body, or a bare "
                               "JWS): the bundle must extend it, and without --public-key every checkpoint must be "
                               "signed by the key that signed it")
    p_verify.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p_verify.add_argument("--jobs", type=int, help="worker processes for the events (default: one per CPU for a "
                                                   "large bundle)")


def run(args: argparse.Namespace, settings: Any) -> int:
    if args.command == "verify-bundle":
        return verify_bundle(args)
    if args.command == "audit" and args.audit_action == "bundle":
        return audit_bundle(args, settings)
    if args.command == "audit" and args.audit_action == "verify":
        from app.audit import verify_cli

        return verify_cli.run(args, settings)
    raise ValueError(f"not a command of app.proof.cli: {args.command}")


def verify_bundle(args: argparse.Namespace) -> int:
    from app.proof.verify_bundle import Unreadable, verify

    try:
        result = verify(args.file, args.public_key, args.trusted_checkpoint, jobs=args.jobs)
    except Unreadable as exc:
        print(f"unreadable: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - never exit 1 ("breaks found") by accident, nor with a traceback
        print(f"error: verify-bundle could not finish on this input ({type(exc).__name__}: {str(exc)[:300]}); "
              "this is a bug in the verifier, please report it", file=sys.stderr)
        return 2
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return 0 if result.valid else 1
    for b in result.breaks:
        print(f"{b.kind}\t{b.where()}\t{b.detail}")
    if result.breaks_total > len(result.breaks):
        print(f"... {result.breaks_total - len(result.breaks)} more breaks not listed")
    for warning in result.warnings:
        print(f"WARNING: {warning}")
    print(summary(result))
    return 0 if result.valid else 1


def summary(result: Any) -> str:
    c = result.counts
    rate = f", {c.get('events', 0) / result.seconds:,.0f} events/s" if result.seconds and c.get("events") else ""
    facts = (f"tenant {result.tenant!r}: {c.get('events', 0)} events of {c.get('subjects', 0)} subjects "
             f"({c.get('chain_v1_events', 0)} chain v1), {c.get('notices', 0)} notices, "
             f"{c.get('disclosures', 0)} disclosures, {c.get('checkpoints_verified', 0)} of "
             f"{c.get('checkpoints', 0)} checkpoints verified with {result.keys_from}")
    trusted = ""
    if result.trusted is not None:
        trusted = (f"; trusted checkpoint {result.trusted['tree_size']}: "
                   f"{'consistent' if result.trusted.get('consistent') else 'NOT consistent'}")
    state = "VALID" if result.valid else "BROKEN: " + ", ".join(
        f"{kind} x{n}" for kind, n in sorted(result.by_kind.items()))
    return f"{result.path}: {state}\n  {facts}{trusted} ({result.seconds:.2f} s{rate})"


def database_and_keys(settings: Any) -> Any:
    """The Proof of a command that needs DATABASE_URL and the keys; None (said on stderr) without."""
    from app.proof.context import Proof

    if not settings.database_url:
        print("DATABASE_URL is not set", file=sys.stderr)
        return None
    try:
        return Proof.from_settings(settings)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return None


def audit_bundle(args: argparse.Namespace, settings: Any) -> int:
    from app.core.errors import ProblemError

    proof = database_and_keys(settings)
    if proof is None:
        return 2
    try:
        manifest = asyncio.run(_bundle(settings, proof, args.tenant, args.out))
    except LookupError as exc:
        print(str(exc.args[0] if exc.args else exc), file=sys.stderr)
        return 2
    except ProblemError as exc:  # LogInconsistent: history rewritten, nothing signed
        print(f"no bundle written: {exc.detail}", file=sys.stderr)
        return 1
    c = manifest["counts"]
    print(f"wrote {args.out}: tenant {manifest['tenant']!r}, {c['events']} events, tree size {manifest['tree_size']} "
          f"(root {manifest['root_hash']}), {c['notices']} notices, {c['disclosures']} disclosures, "
          f"{c['checkpoints']} checkpoints")
    return 0


async def _bundle(settings: Any, proof: Any, tenant: str, out: Path) -> dict[str, Any]:
    from app.core.db import connect
    from app.proof.bundle import write_bundle

    name = "consent-ledger-audit"
    primary = await connect(settings.database_url, settings, name)  # the checkpoint is a write
    replica = None
    try:
        if settings.audit_database_url:  # the rest is read there
            replica = await connect(settings.audit_database_url, settings, name)
        return await write_bundle(primary, tenant, proof, out, checkpoint_dir=settings.checkpoint_dir, reader=replica)
    finally:
        if replica is not None:
            await replica.close()
        await primary.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consent-ledger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    settings = None
    if args.command != "verify-bundle":
        from app.core.settings import get_settings

        settings = get_settings()
    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())

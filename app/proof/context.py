"""The keys a process proves with, loaded once at start-up from files or the environment (never
from the database: docs/proof.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from app.core.settings import Settings
from app.proof import keys


@dataclass(frozen=True)
class Proof:
    signer: keys.Signer
    secret: bytes
    retired_keys_file: Path | None
    # How long after a newer notice version took effect a form showing the older one is still
    # recorded (as superseded) instead of refused.
    notice_grace: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> "Proof":
        signer = keys.load_signer(settings.signing_key_file, settings.signing_key)
        secret = keys.load_secret(settings.ledger_secret_file, settings.ledger_secret)
        missing = [name for name, value in (("SIGNING_KEY_FILE (or SIGNING_KEY)", signer),
                                            ("LEDGER_SECRET_FILE (or LEDGER_SECRET)", secret)) if value is None]
        if missing:
            raise ValueError(f"{' and '.join(missing)} must be set: checkpoints, receipts and event seals are "
                             "made with keys kept outside the database (docs/proof.md)")
        return cls(signer=signer, secret=secret, retired_keys_file=settings.signing_public_keys_file,
                   notice_grace=timedelta(seconds=settings.notice_grace_seconds))

    def jwks(self) -> dict:
        return keys.jwks(self.signer, self.retired_keys_file)

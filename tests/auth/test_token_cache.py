"""The verified-token cache never outlives a token, and never remembers a failure."""

from __future__ import annotations

import time

import pytest

from app.auth.tokens import TokenError, TokenVerifier, issue
from app.core.settings import Settings

SETTINGS = Settings(database_url="unused", jwt_secret="cache-secret", jwt_leeway_seconds=0)


def test_cached_token_still_expires():
    verifier = TokenVerifier(SETTINGS)
    token = issue(SETTINGS, tenant="t", sub="s", scopes=["consents:read"], ttl_seconds=1)
    assert verifier.verify(token).tenant == "t"
    assert verifier.verify(token).tenant == "t"  # served from the cache
    time.sleep(2.1)  # exp has whole-second precision
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(token)


def test_a_refused_token_is_refused_every_time():
    verifier = TokenVerifier(SETTINGS)
    forged = issue(SETTINGS, tenant="t", sub="s", scopes=["consents:read"], key="another-secret")
    for _ in range(2):
        with pytest.raises(TokenError, match="signature"):
            verifier.verify(forged)

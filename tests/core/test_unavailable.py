"""What a lost database looks like to a client: 503 problem+json with Retry-After, and an answer
(never an exception the server turns into a dropped connection) for any other failure too.

The exceptions are the ones asyncpg and SQLAlchemy raised in real outage runs; the real outage is
tests/core/test_outage.py.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import TimeoutError as SAPoolTimeout

from app.core.errors import database_unavailable
from app.main import create_app
from tests.core.test_errors import problem


def _wrapped(cls: type, cause: BaseException, *, invalidated: bool = False) -> BaseException:
    """SQLAlchemy's shape: its error wraps the dialect's DBAPI error, which was raised from asyncpg's."""
    orig = Exception(str(cause))
    orig.__cause__ = cause
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


UNAVAILABLE: dict[str, Callable[[], BaseException]] = {
    "refused": lambda: ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    "refused-all-addresses": lambda: OSError("Multiple exceptions: [Errno 111] Connect call failed, [Errno 99] ..."),
    "reset": lambda: ConnectionResetError(104, "Connection reset by peer"),
    "pool-acquire-timeout": lambda: TimeoutError(),
    "closed-mid-operation": lambda: asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"),
    "pool-closing": lambda: asyncpg.InterfaceError("pool is closing"),
    "state-switch": lambda: asyncpg.exceptions.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"),
    "shutting-down-57P03": lambda: asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    "admin-shutdown-57P01": lambda: asyncpg.exceptions.AdminShutdownError(
        "terminating connection due to administrator command"),
    "too-many-connections-53300": lambda: asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients"),
    "connection-failure-08006": lambda: asyncpg.exceptions.ConnectionFailureError("connection failure"),
    "sqlalchemy-operational": lambda: _wrapped(SAOperationalError, asyncpg.exceptions.CannotConnectNowError(
        "the database system is starting up")),
    "sqlalchemy-interface": lambda: _wrapped(SAInterfaceError, asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation")),
    "sqlalchemy-invalidated": lambda: _wrapped(SAOperationalError, Exception("server closed"), invalidated=True),
    "sqlalchemy-pool-timeout": lambda: SAPoolTimeout("QueuePool limit of size 4 overflow 0 reached"),
    "raised-while-handling": lambda: _raised_while_handling(),
}


def _raised_while_handling() -> BaseException:
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            raise RuntimeError("rollback failed")  # noqa: B904 - the implicit context is the point
    except RuntimeError as exc:
        return exc


BUGS: dict[str, Callable[[], BaseException]] = {
    "runtime-error": lambda: RuntimeError("a bug"),
    "key-error": lambda: KeyError("missing"),
    "syntax-error-42601": lambda: asyncpg.exceptions.PostgresSyntaxError("syntax error at or near"),
    "file-not-found": lambda: FileNotFoundError(2, "No such file"),
}


@pytest.fixture(scope="module")
def failing_app(settings):
    """The real app plus one route that raises what the test names (routes cannot be removed again,
    so it is an app of its own)."""
    application = create_app(settings)
    cases = {**UNAVAILABLE, **BUGS}

    @application.get("/v1/raise/{case}")
    async def raise_(case: str):
        raise cases[case]()

    @application.post("/v1/raise-after-reading/{case}")
    async def raise_after_body(case: str, body: dict):
        raise cases[case]()

    return application


@pytest.fixture
async def failing(failing_app):
    # raise_app_exceptions=True (the default): an exception escaping the app fails the test, as a
    # real server would have closed the connection on it.
    transport = httpx.ASGITransport(app=failing_app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.mark.parametrize("case", sorted(UNAVAILABLE))
async def test_database_unavailable_is_503_with_retry_after(failing, case):
    for response in (await failing.get(f"/v1/raise/{case}"),
                     await failing.post(f"/v1/raise-after-reading/{case}", json={"a": 1})):
        body = problem(response, 503, "database-unavailable")
        assert int(response.headers["retry-after"]) >= 1
        # a write's connection can drop during COMMIT: its answer never claims nothing was written
        if response.request.method == "POST":
            assert "Idempotency-Key" in body["detail"] and "nothing was written" not in body["detail"]
        else:
            assert "Retry later" in body["detail"]


@pytest.mark.parametrize("case", sorted(BUGS))
async def test_any_other_error_is_a_500_answer_not_an_exception(failing, case):
    response = await failing.get(f"/v1/raise/{case}")
    problem(response, 500, "internal-error")
    assert "retry-after" not in response.headers


def test_classifier_does_not_take_bugs_for_outages():
    assert all(database_unavailable(make()) for make in UNAVAILABLE.values())
    assert not any(database_unavailable(make()) for make in BUGS.values())

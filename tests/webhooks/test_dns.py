"""The worker's resolver: one lookup per name at a time, a short cache, a timeout, and the SSRF
check still run on every cached answer. Fake DNS through socket.getaddrinfo, no network."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from app.webhooks.dns import LookupTimeout, Resolver
from app.webhooks.ssrf import UnsafeURL, resolve

ANSWERS = {"public.example": "93.184.216.34", "private.example": "10.0.0.5"}


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict:
    state = {"calls": [], "delay": 0.0}
    lock = threading.Lock()

    def getaddrinfo(host, port, *args, **kwargs):
        with lock:
            state["calls"].append(host)
        time.sleep(state["delay"])
        if host not in ANSWERS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ANSWERS[host], port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


async def test_concurrent_lookups_of_one_name_share_one_thread_and_the_answer_is_kept(dns) -> None:
    resolver = Resolver(threads=2, ttl=0.3, timeout=2)
    try:
        dns["delay"] = 0.2
        answers = await asyncio.gather(*(resolver.getaddrinfo("public.example", 443) for _ in range(20)))
        assert dns["calls"] == ["public.example"]
        assert {a[0][4][0] for a in answers} == {"93.184.216.34"}
        await resolver.getaddrinfo("public.example", 443)
        assert len(dns["calls"]) == 1  # cached
        await asyncio.sleep(0.35)
        await resolver.getaddrinfo("public.example", 443)
        assert len(dns["calls"]) == 2  # the cache is short
    finally:
        resolver.close()


async def test_a_lookup_that_takes_too_long_times_out_without_starting_another(dns) -> None:
    resolver = Resolver(threads=2, ttl=5, timeout=0.1)
    try:
        dns["delay"] = 0.5
        for _ in range(3):
            with pytest.raises(LookupTimeout):
                await resolver.getaddrinfo("public.example", 443)
        assert dns["calls"] == ["public.example"]  # later callers wait on the same lookup
        await asyncio.sleep(0.5)
        dns["delay"] = 0.0
        assert (await resolver.getaddrinfo("public.example", 443))[0][4][0] == "93.184.216.34"
        assert len(dns["calls"]) == 1  # the slow answer, once it came, was kept for everyone
    finally:
        resolver.close()


async def test_failures_are_not_cached(dns) -> None:
    resolver = Resolver(threads=2, ttl=5, timeout=1)
    try:
        for _ in range(2):
            with pytest.raises(socket.gaierror):
                await resolver.getaddrinfo("nope.example", 443)
        assert dns["calls"] == ["nope.example", "nope.example"]
    finally:
        resolver.close()


async def test_a_cached_answer_still_goes_through_the_ssrf_check(dns) -> None:
    resolver = Resolver(threads=2, ttl=5, timeout=1)
    try:
        for _ in range(2):
            with pytest.raises(UnsafeURL, match="resolves to a private address"):
                await resolve("https://private.example/hook", (), resolver.getaddrinfo)
        assert dns["calls"] == ["private.example"]
        target = await resolve("https://public.example/hook", (), resolver.getaddrinfo)
        assert target.address == "93.184.216.34" and target.sni_hostname == "public.example"
    finally:
        resolver.close()

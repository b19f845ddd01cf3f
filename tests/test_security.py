"""Security items of issue 9: phone masking of written-out numbers, no version banner in HTTP
answers, and a header-read timeout against slow-header (slowloris) clients. The HTTP checks
run against a real channel service process (`python -m services.sms`)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from channel_support import create_topics, service_env

from shared.config import ChannelSettings
from shared.masking import mask_phone, scrub
from tools.devstack import Service

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]
HEADER_TIMEOUT_S = 1.0


def shown_digits(masked: str) -> str:
    return "".join(c for c in masked if c.isdigit())


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("call +86 138 0013 8000 now", "0013"),
        ("call 138-0013-8000 now", "0013"),
        ("call +86-138-0013-8000.", "0013"),
        ("call +1 (415) 555-0142 now", "555"),
        ("call +8613800138000 now", "0013"),
        ("call 13800138000 now", "0013"),
        ("call +33 6 12 34 56 78 now", "3456"),
    ],
)
def test_scrub_masks_phone_numbers_however_they_are_written(text: str, secret: str) -> None:
    masked = scrub(text)
    assert secret not in masked.replace(" ", "").replace("-", "")
    phone = re.search(r"\+?[\d*]+\*{4}\d+", masked)
    assert phone is not None, masked
    # at most the first 5 and the last 4 digits show
    assert len(shown_digits(phone.group(0))) <= 9
    assert masked.startswith("call ")


@pytest.mark.parametrize(
    "text",
    [
        "at 2026-11-23 19:09:33",
        "from 192.168.100.200",
        "pi is 3.14159265358979",
        "attempt 2 of 3, leg 1",
        "offset 12345",
        "partitions 0 1 2 3 4 5 6 7 8 9 10 11",
    ],
)
def test_scrub_leaves_dates_times_addresses_and_small_numbers_alone(text: str) -> None:
    assert scrub(text) == text


def test_scrub_stays_fast_on_long_runs_of_digit_groups() -> None:
    started = time.perf_counter()
    for text in ("1 " * 2500 + "x", "12-" * 1700 + "a", "+86 138 0013 8000 " * 300):
        masked = scrub(text)
        assert "0013 8000" not in masked
    assert time.perf_counter() - started < 2.0  # quadratic search took 40 s on the first


@pytest.mark.parametrize(
    ("phone", "most_shown"),
    [
        ("+8613800138000", 9),  # long: first 5 and last 4
        ("+861380013800012", 9),
        ("+4420712345", 6),  # 10 digits: 4 hidden
        ("+4420123", 3),  # 7 digits: 4 hidden
        ("+123456", 0),  # 6 or fewer: nothing shown
    ],
)
def test_mask_phone_shows_fewer_digits_of_shorter_numbers(phone: str, most_shown: int) -> None:
    masked = mask_phone(phone)
    assert "****" in masked or set(masked.lstrip("+")) == {"*"}
    shown = shown_digits(masked)
    assert len(shown) <= most_shown
    digits = phone.lstrip("+")
    assert len(digits) - len(shown) >= min(4, len(digits))


@pytest.fixture
async def sms_service(make_settings: MakeSettings, tmp_path: Path) -> AsyncIterator[Service]:
    s = make_settings("sms")
    await create_topics(s)
    env = {**service_env(s), "TONGDA_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S)}
    service = Service("sms", tmp_path / "sms.log", s.http_port, env=env)
    await service.start(ready_timeout=30.0)
    try:
        yield service
    finally:
        await service.stop()


async def raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_no_version_banner_and_slow_headers_are_cut_off(sms_service: Service) -> None:
    """One service process for both checks (it takes seconds to start)."""
    ok = await raw_exchange(
        sms_service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    bad = await raw_exchange(sms_service.port, b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
    missing = await raw_exchange(
        sms_service.port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert ok.startswith(b"HTTP/1.1 200")
    # aiohttp's own error page, no app involved
    assert bad.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400"))
    assert missing.startswith(b"HTTP/1.1 404")
    for answer in (ok, bad, missing):
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert b"server: tongda" in head
        assert b"aiohttp" not in head and b"python" not in head

    # slowloris: a header line every 0.1 s, never the blank line
    reader, writer = await asyncio.open_connection("127.0.0.1", sms_service.port)
    opened = time.monotonic()
    closed_after: float | None = None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):  # a header line every 0.1 s, never the blank line: 4 s if allowed
            try:
                writer.write(f"X-Slow-{i}: {i}\r\n".encode())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if not data:  # the server closed the connection
                closed_after = time.monotonic() - opened
                break
    finally:
        writer.close()
    assert closed_after is not None, "the server kept a slow-header connection open for 4 s"
    assert closed_after <= HEADER_TIMEOUT_S + 0.5

    # an idle connection that never sends a byte is closed too
    reader, writer = await asyncio.open_connection("127.0.0.1", sms_service.port)
    opened = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 2) == b""
    finally:
        writer.close()
    assert time.monotonic() - opened <= HEADER_TIMEOUT_S + 0.5

"""One access-log line per request: method, path (never the query), status, bytes in and out,
upstream time to first byte, total time; as text, and as JSON fields with --log-format json."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import aiohttp
import pytest

from conftest import Stack, StackFactory
from proxy import logs
from proxy.logs import BatchedStreamHandler, JsonFormatter, flush_access_log_periodically
from test_check import run_cli


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []
        self.json: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(record.getMessage())
        self.json.append(json.loads(JsonFormatter().format(record)))


@pytest.fixture
def access_lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("sigv4_proxy.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


async def test_one_line_per_request(stack: Stack, client: aiohttp.ClientSession, access_lines: Lines) -> None:
    async with client.post(stack.url / "prod" / "download" % {"size": "3000", "secret": "q"}, data=b"y" * 700) as resp:
        assert resp.status == 200 and len(await resp.read()) == 3000
    async with client.get(stack.url / "prod" / "slow" % {"delay": "0.2"}) as resp:
        assert resp.status == 200
    async with client.get(stack.url / "__sigv4proxy" / "nope") as resp:  # answered by the proxy itself
        error = await resp.read()
    assert len(access_lines.text) == 3
    post, slow, refused = access_lines.json
    assert {k: post[k] for k in ("method", "path", "status", "route", "bytes_in", "bytes_out")} == {
        "method": "POST", "path": "/prod/download", "status": 200, "route": "/", "bytes_in": 700, "bytes_out": 3000}
    assert 0 < post["upstream_ttfb_ms"] <= post["total_ms"]  # type: ignore[operator]
    assert 200 <= slow["upstream_ttfb_ms"] <= slow["total_ms"]  # type: ignore[operator]
    assert refused["status"] == 404 and refused["route"] == "-"
    assert refused["upstream_ttfb_ms"] is None and refused["bytes_out"] == len(error)
    assert access_lines.text[0].startswith("POST /prod/download 200 in=700 out=3000 ttfb=")
    assert "secret" not in " ".join(access_lines.text)


async def test_cli_log_format_level_and_debug_signing(stack: Stack) -> None:
    base = ["--upstream", str(stack.cloudfront_url), "--sign-host", "abc123.execute-api.ap-northeast-1.amazonaws.com",
            "--path", "/prod/items"]
    code, _out, err = await run_cli(*base, "--log-format", "json", "--debug-signing")
    assert code == 0, err
    entries = [json.loads(line) for line in err.splitlines()]
    access = [e for e in entries if e["logger"] == "sigv4_proxy.access" and e["path"] == "/prod/items"]
    assert len(access) == 1 and access[0]["status"] == 200
    signing = [e for e in entries if e["logger"] == "sigv4_proxy.signing"]
    assert signing and signing[0]["canonical_request"].startswith("GET\n/prod/items\n")
    code, _out, err = await run_cli(*base, "--log-level", "warning")
    assert code == 0 and "sigv4_proxy.access" not in err


class Broken:
    """An addon with a bug."""

    async def on_request(self, request: object) -> None:
        raise RuntimeError("bug")

    def on_response(self, request: object, headers: object) -> None:
        return None


async def test_internal_error_and_client_gone_are_logged(make_stack: StackFactory, client: aiohttp.ClientSession,
                                                          access_lines: Lines) -> None:
    broken = await make_stack(addons=(Broken(),))
    async with client.get(broken.url / "prod" / "x") as resp:
        assert resp.status == 500
    built = await make_stack()
    with pytest.raises(TimeoutError):
        async with client.get(built.url / "prod" / "slow" % {"delay": "2"}, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    for _ in range(50):  # the proxy notices the hang-up on its own schedule
        if len(access_lines.json) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(e["path"], e["status"]) for e in access_lines.json] == [("/prod/x", 500), ("/prod/slow", 499)]


async def test_access_lines_are_batched_but_never_held_back_long() -> None:
    handler = BatchedStreamHandler(capacity=3, interval=0.2)
    handler.setStream(io.StringIO())
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("sigv4_proxy.access")
    logger.addHandler(handler)
    try:
        written = handler.stream
        handler._written = asyncio.get_running_loop().time() + 1e9  # as if just flushed
        logger.info("one")
        assert written.getvalue() == ""  # batched
        logger.warning("a warning")  # goes out at once, with what waited
        assert written.getvalue() == "one\na warning\n"
        for n in range(3):
            logger.info("line %d", n)  # the third fills the batch
        assert written.getvalue().endswith("line 0\nline 1\nline 2\n")
        logger.info("idle tail")
        flusher = asyncio.create_task(flush_access_log_periodically(0.05))
        await asyncio.sleep(0.2)
        flusher.cancel()
        assert written.getvalue().endswith("idle tail\n")  # an idle proxy's last line appears
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def configured_logging() -> Iterator[None]:
    """configure_logging() as `run` does, undone afterwards (it changes process-wide state)."""
    root, access = logging.getLogger(), logging.getLogger("sigv4_proxy.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate, logs._Direct.handler, logging._srcfile)
    yield
    root.handlers[:], access.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    access.propagate, logs._Direct.handler, logging._srcfile = saved[3], saved[4], saved[5]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_short_cut_writes_what_a_logged_record_would(
    log_format: str, configured_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.configure_logging("info", log_format)
    access = logging.getLogger("sigv4_proxy.access")
    (handler,) = access.handlers
    assert isinstance(handler, BatchedStreamHandler)
    handler.setStream(io.StringIO())
    message = "GET /prod/items 200 in=0 out=17 ttfb=0.4ms total=0.9ms"
    fields = {"method": "GET", "path": "/prod/items", "status": 200, "total_ms": 0.9}
    record = access.makeRecord(access.name, logging.INFO, __file__, 1, "%s", (message,), None, extra={"fields": fields})
    expected = handler.format(record)

    def no_records(*args: object, **kwargs: object) -> logging.LogRecord:
        raise AssertionError("the short cut must not build a LogRecord")

    monkeypatch.setattr(access, "makeRecord", no_records)
    logs.log_access(message, lambda: fields)
    (line,) = handler._lines
    if log_format == "json":
        got, want = json.loads(line), json.loads(expected)
        assert got.pop("time")[:16] == want.pop("time")[:16]  # same minute, same ISO form
        assert got == want
    else:  # the same text after the time of day (YYYY-mm-dd HH:MM:SS,mmm)
        assert line[23:] == expected[23:] == f" INFO sigv4_proxy.access: {message}"
        assert line[:16] == expected[:16]

    # Any other listener on the access logger (a test's, an embedding program's) gets real records.
    monkeypatch.undo()
    extra = Lines()
    access.addHandler(extra)
    logs.log_access(message, lambda: fields)
    assert extra.text == [message] and extra.json[0]["total_ms"] == 0.9

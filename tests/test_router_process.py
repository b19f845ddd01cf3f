"""`python -m services.router` as a process: configuration errors exit 2 with the reason,
and a batch loop that fails unexpectedly stops the router with exit status 1 (so that the
orchestrator restarts it) instead of leaving it up without its loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.signing_keys import SIGNING_ENV
from tools.devstack import REPO_ROOT, free_port

CRASHING = """
import services.router.engine as engine

async def broken_run(self, consumer, stopping):
    raise RuntimeError("injected bug")

engine.RouterEngine.run = broken_run
from services.router.__main__ import main
main()
"""


def run_router(
    env: dict[str, str], *args: str, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_bad_setting_exits_2_naming_the_variable() -> None:
    done = run_router({"TONGDA_HTTP_PORT": "eighty"}, "-m", "services.router")
    assert done.returncode == 2
    assert "TONGDA_HTTP_PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_signing_key_is_refused(broker: str, redis_server: str) -> None:
    """Secure by default: no key signing the internal topics, no router (exit 2, saying so)."""
    env = {
        "TONGDA_KAFKA_BOOTSTRAP": broker,
        "TONGDA_REDIS_URL": redis_server,
        "TONGDA_API_TOKEN": "t",
    }
    done = run_router(env, "-m", "services.router")
    assert done.returncode == 2
    assert "no signing key: set TONGDA_SIGNING_KEYS" in done.stderr
    assert "Traceback" not in done.stderr


def test_default_api_token_is_refused(broker: str, redis_server: str) -> None:
    env = {"TONGDA_KAFKA_BOOTSTRAP": broker, "TONGDA_REDIS_URL": redis_server}
    done = run_router(env, "-m", "services.router")
    assert done.returncode == 2
    assert "TONGDA_API_TOKEN" in done.stderr


def test_a_failing_batch_loop_stops_the_router_with_status_1(
    broker: str, redis_server: str, tmp_path: Path
) -> None:
    env = {
        "TONGDA_KAFKA_BOOTSTRAP": broker,
        "TONGDA_REDIS_URL": redis_server,
        "TONGDA_API_TOKEN": "t",
        "TONGDA_HTTP_PORT": str(free_port()),
        "TONGDA_HTTP_HOST": "127.0.0.1",
        "TONGDA_LOG_FORMAT": "text",
        "TONGDA_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "TONGDA_FAUST_DATADIR": str(tmp_path / "faust"),
        "TONGDA_CONSUMER_GROUP": "crash-test",
        "TONGDA_FAUST_APP_ID": "tongda-router",
        **SIGNING_ENV,
    }
    done = run_router(env, "-c", CRASHING)
    assert done.returncode == 1, done.stdout[-2000:]
    assert "batch loop failed; stopping the router" in done.stdout
    assert "router stopped" in done.stdout  # it still drained and closed its clients

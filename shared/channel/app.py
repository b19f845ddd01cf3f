"""The aiohttp app of a channel service: ops routes, provider webhooks, and the consume loop
running inside the app's lifecycle (`cleanup_ctx`), so HTTP and Kafka start and stop together.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from shared.channel.provider import Provider
from shared.channel.service import ChannelService
from shared.config import ChannelSettings, load_settings
from shared.contract.models import Channel
from shared.errors import ConfigError
from shared.http import (
    READINESS_CHECKS,
    ReadinessCheck,
    add_ops_routes,
    error_middleware,
    server_options,
)
from shared.http import redis_check as ping_redis
from shared.logging import setup_logging
from shared.security import check_connection_settings
from shared.signing import Signer
from shared.templates import check_templates, log_template_report, use_templates

log = logging.getLogger(__name__)

DEFAULT_PORTS: dict[Channel, int] = {"sms": 8081, "email": 8082, "push": 8083, "voice": 8084}

SETTINGS = web.AppKey("settings", ChannelSettings)
SERVICE = web.AppKey("service", ChannelService)

ProviderFactory = Callable[[ChannelSettings], Provider]


def create_app(settings: ChannelSettings, provider: Provider) -> web.Application:
    """The service's app; starting it starts the consume loop, cleaning it up drains it."""
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    service = ChannelService(settings, provider)
    app[SERVICE] = service
    app[READINESS_CHECKS] = [
        ("kafka", kafka_check(service)),
        ("redis", redis_check(service)),
        ("consumer", consumer_check(service)),
    ]
    add_ops_routes(app)
    app.router.add_routes(provider.webhook_routes())
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    try:
        await service.start()
    except BaseException:
        await service.stop()
        raise
    yield
    await service.stop()


def kafka_check(service: ChannelService) -> ReadinessCheck:
    """Ready when the producer gets cluster metadata from a broker."""

    async def check() -> str | None:
        if service.producer is None:
            return "not started"
        await service.producer.client.fetch_all_metadata()
        return None

    return check


def redis_check(service: ChannelService) -> ReadinessCheck:
    """Ready when Redis answers PING."""

    async def check() -> str | None:
        if service.redis is None:
            return "not started"
        meter = service.liveness.meter if service.liveness is not None else None
        return await ping_redis(service.redis, meter)()

    return check


def consumer_check(service: ChannelService) -> ReadinessCheck:
    """Ready while the consume loop runs and is not stalled (shared/health.py: no batch
    completed for `stall_after_s` while records wait) and its group assigns it partitions
    (no rebalance waiting longer than `group_stuck_after_s`)."""

    async def check() -> str | None:
        task, worker = service.loop_task, service.worker
        if task is None or worker is None or task.done():
            return "consume loop not running"
        return await worker.watchdog.stalled() or await service.group_watch.stuck()

    return check


def channel_settings(channel: Channel) -> ChannelSettings:
    """Settings from TONGDA_* variables for `channel`; its default port unless one is set."""
    settings = load_settings(ChannelSettings, f"tongda-{channel}", channel=channel)
    if "http_port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"http_port": DEFAULT_PORTS[channel]})
    return settings


def check_message_templates(settings: ChannelSettings) -> None:
    """Load the templates (ConfigError if invalid); on sms, log every template's segments."""
    use_templates(settings.templates_path)
    if settings.channel == "sms":
        log_template_report(log, settings.max_sms_segments)  # checks them first
    else:
        check_templates()


def run(channel: Channel, make_provider: ProviderFactory) -> None:
    """Serve until SIGTERM or SIGINT, then drain. Exit 2 on bad configuration, 1 on failure."""
    settings = channel_settings(channel)
    setup_logging(f"tongda-{channel}", settings.log_level, settings.log_format)
    try:
        check_message_templates(settings)
        Signer.from_settings(settings)  # no signing key: exit 2 before connecting anywhere
        check_connection_settings(settings)  # TLS/SASL/ACL settings (shared/security.py)
        app = create_app(settings, make_provider(settings))
        web.run_app(
            app,
            host=settings.http_host,
            port=settings.http_port,
            handle_signals=True,
            print=None,
            access_log=None,
            shutdown_timeout=5.0,
            **server_options(settings),
        )
    except ConfigError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    except Exception as exc:  # e.g. Kafka or Redis unreachable at start-up
        log.critical("cannot start: %s: %s", type(exc).__name__, exc, exc_info=True)
        sys.exit(1)
    log.info("stopped", extra={"pid": os.getpid()})

"""Every topic tongda uses, with its partitions and configuration, created explicitly.

Run `python -m shared.topics` to create them (deploy job, dev scripts); services check at
start-up that their topics exist and refuse to run on a broker that lacks them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.config import CommonSettings, load_settings
from shared.contract.models import CHANNELS
from shared.errors import ConfigError
from shared.security import check_connection_settings, kafka_client_options

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: CommonSettings) -> list[TopicSpec]:
    t = settings.topics
    n = settings.kafka_topic_partitions
    # Every topic gets the same limit as tongda's producers and consumers (docs/reliability.md,
    # "Limits"): nothing bigger can be written, every record tongda reads fits its fetches,
    # and whatever it reads can be dead-lettered (whole, or cut to fit with its offset).
    big = {"max.message.bytes": str(settings.kafka_max_request_bytes)}
    specs = [
        TopicSpec(t.requested, n, big),
        TopicSpec(t.profiles, n, {"cleanup.policy": "compact", **big}),
        TopicSpec(t.inquiries, n, big),
        TopicSpec(t.status, n, big),
        TopicSpec(t.audit, n, big),
        TopicSpec(t.escalated, n, big),
        TopicSpec(t.resolved, n, big),
        TopicSpec(t.feedback, n, big),
        TopicSpec(t.preferences, n, big),
        TopicSpec(t.deadletter, n, big),
        TopicSpec(t.router_inbox, n, big),
    ]
    specs += [TopicSpec(t.dispatch(ch), n, big) for ch in CHANNELS]
    # faust's partition-assignor leader topic for the router app (faust would create it).
    specs.append(TopicSpec(f"{settings.faust_app_id}-__assignor-__leader", 1))
    return specs


async def ensure_topics(settings: CommonSettings) -> list[str]:
    """Create every missing topic; return the names created. Existing ones are left alone."""
    admin = AIOKafkaAdminClient(
        **kafka_client_options(settings),
        client_id=f"{settings.kafka_client_id}-admin",
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in topic_specs(settings) if s.name not in existing]
        if not missing:
            return []
        resp = await admin.create_topics(
            [
                NewTopic(
                    s.name, s.partitions, settings.kafka_replication_factor, topic_configs=s.config
                )
                for s in missing
            ]
        )
        created = []
        for name, code, message in resp.topic_errors:
            if code not in (0, TOPIC_ALREADY_EXISTS):
                raise ConfigError(f"cannot create topic {name}: error {code} {message}")
            if code == 0:
                created.append(name)
        return created
    finally:
        await admin.close()


async def missing_topics(settings: CommonSettings, names: list[str]) -> list[str]:
    admin = AIOKafkaAdminClient(
        **kafka_client_options(settings),
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    return [n for n in names if n not in existing]


def main() -> None:
    logging.basicConfig(level="INFO", format="%(message)s")
    settings = load_settings(CommonSettings, "tongda-topics")
    try:
        check_connection_settings(settings)
        created = asyncio.run(ensure_topics(settings))
    except ConfigError as exc:
        print(f"tongda-topics: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"topics created: {', '.join(created) if created else 'none (all present)'}")


if __name__ == "__main__":
    main()

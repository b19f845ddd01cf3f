"""The rest of tongda's Redis use on Redis Cluster: the inquiries desk and sender index, the
router's API (a notification looked up by id in every group), and the channel services'
claims and receipts. The tests of a single Redis, collected again here where `redis_server`
and `redis` are the local cluster's (tests/conftest.py `redis_cluster`)."""

from __future__ import annotations

import pytest
from redis.asyncio import RedisCluster

from tests.channel_support import make_settings  # noqa: F401
from tests.test_channel_receipts import (  # noqa: F401
    test_a_failed_clean_up_after_publishing_is_no_unreported_receipt,
    test_a_receipt_racing_its_accept_is_published_once,
)
from tests.test_channel_worker import (  # noqa: F401
    harness,
    test_another_attempt_of_the_same_leg_is_sent,
    test_receipt_reaching_another_replica_is_published_there,
    test_redelivered_batch_never_reaches_the_provider_again,  # claims found: MGET per slot
)
from tests.test_inquiries_desk import (  # noqa: F401
    h,
    test_hardship_escalates_urgent_holds_collection_and_resolution_resumes_it,
    test_survey_answer_becomes_feedback_with_csat,
    test_tombstone_erases_the_index_and_the_inquiries,
)
from tests.test_router_api import (  # noqa: F401
    api,
    test_post_routes_and_get_shows_masked_state,
    test_put_preference_opts_out_and_is_published,
    test_unknown_notification_is_404,
)

# The single-Redis versions run in `make test`; these on the cluster in the slow suite
# (`make test-all`, .ci/run), to keep `make test` near 10 minutes.
pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(redis_cluster: str) -> str:
    """Here the Redis every test uses is the cluster."""
    return redis_cluster


@pytest.fixture
async def redis(cluster: RedisCluster) -> RedisCluster:
    """The cluster client (tests/conftest.py), emptied (FLUSHALL on every primary) first."""
    await cluster.flushall()
    return cluster

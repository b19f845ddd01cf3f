"""`python -m services.router`: run the router (faust worker) until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys

import faust

from services.router.app import create_app
from services.router.intents import Classifier
from services.router.plans import load_plans
from services.router.policy import load_policy
from shared.config import DEFAULT_API_TOKEN, RouterSettings, load_settings
from shared.errors import ConfigError
from shared.gctune import tune_gc
from shared.logging import setup_logging
from shared.security import check_connection_settings
from shared.signing import Signer
from shared.templates import use_templates
from shared.topics import missing_topics, topic_specs


def main() -> None:
    settings = load_settings(RouterSettings, "tongda-router")
    setup_logging("tongda-router", settings.log_level, settings.log_format)
    try:
        if settings.api_token.get_secret_value() in ("", DEFAULT_API_TOKEN):
            raise ConfigError("set TONGDA_API_TOKEN: the API refuses to run with the default token")
        Signer.from_settings(settings)  # no signing key, no start (shared/signing.py)
        check_connection_settings(settings)  # TLS/SASL/ACL settings (shared/security.py)
        plans = load_plans(settings.plans_path)
        use_templates(settings.templates_path)  # the variables requests must carry
        policy = load_policy(settings.policy_preset, settings.policy_path)
        classifier = Classifier.from_file(settings.intents_path)
        missing = asyncio.run(missing_topics(settings, [t.name for t in topic_specs(settings)]))
        if missing:
            raise ConfigError(
                f"topics missing on {settings.kafka_bootstrap}: {', '.join(missing)}; "
                "create them with `python -m shared.topics`"
            )
    except ConfigError as exc:
        print(f"tongda-router: {exc}", file=sys.stderr)
        sys.exit(2)
    app, service = create_app(settings, plans, policy, classifier)
    tune_gc(settings.gc_gen0_threshold)
    worker = faust.Worker(  # starts `service` first, stops it last (services/router/app.py)
        app, service, loglevel=settings.log_level, override_logging=False, quiet=True
    )
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()

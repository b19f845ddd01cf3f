"""`python -m services.sms`: run the sms channel service."""

from services.sms.providers import build_provider
from shared.channel.app import run


def main() -> None:
    """Run until SIGTERM, then drain."""
    run("sms", build_provider)


if __name__ == "__main__":
    main()

"""`python -m services.push`: run the push channel service."""

from services.push.providers import build_provider
from shared.channel.app import run


def main() -> None:
    """Run until SIGTERM, then drain."""
    run("push", build_provider)


if __name__ == "__main__":
    main()

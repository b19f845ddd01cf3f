"""`python -m services.email`: run the email channel service."""

from services.email.providers import build_provider
from shared.channel.app import run


def main() -> None:
    """Run until SIGTERM, then drain."""
    run("email", build_provider)


if __name__ == "__main__":
    main()

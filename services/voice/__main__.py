"""`python -m services.voice`: run the voice channel service."""

from services.voice.providers import build_provider
from shared.channel.app import run


def main() -> None:
    """Run until SIGTERM, then drain."""
    run("voice", build_provider)


if __name__ == "__main__":
    main()

"""`python -m shared.templates [--max-segments N] [--templates DIR]`: check every template and
print the SMS report; exit 1 when an SMS template is over the maximum (2 when the files are
invalid)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.errors import ConfigError
from shared.templates.catalog import use_templates
from shared.templates.report import sms_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.templates", description=__doc__)
    parser.add_argument(
        "--max-segments", type=int, default=3, help="warn above this many segments (default 3)"
    )
    parser.add_argument(
        "--templates", type=Path, help="a templates directory (default: the shipped templates)"
    )
    args = parser.parse_args(argv)
    try:
        use_templates(args.templates)
        lines = sms_report(args.max_segments)
    except ConfigError as exc:
        print(f"invalid templates: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    over = sum(line.over for line in lines)
    print(f"{len(lines)} SMS templates, {over} over {args.max_segments} segments")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())

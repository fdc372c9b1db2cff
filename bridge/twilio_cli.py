"""`bridge twilio attach NUMBER | call TO --from NUMBER`: wire Twilio to the bridge from a shell.

Credentials come from TWILIO_ACCOUNT_SID with TWILIO_API_KEY + TWILIO_API_SECRET (preferred) or
TWILIO_AUTH_TOKEN; the bridge's public URL from `--url` or BRIDGE_PUBLIC_URL.
Exit codes: 0 done, 1 Twilio refused or could not be reached, 2 configuration error.
"""

from __future__ import annotations

import argparse
import sys

from bridge import numbers
from bridge.errors import ConfigError
from bridge.numbers_cli import numbers_path, tool_settings
from bridge.settings import Settings
from bridge.twilio_rest import RestError, TwilioRest


def _bridge_url(settings: Settings, given: str | None) -> str:
    url = given or settings.public_url
    if not url:
        raise ConfigError(["--url: is required (or set BRIDGE_PUBLIC_URL)"])
    return url


def attach(settings: Settings, args: argparse.Namespace) -> int:
    url = _bridge_url(settings, args.url)
    rest = TwilioRest(settings, api_base=args.api_base)
    result = rest.attach(args.number, url, dry_run=args.dry_run)
    if not result.changes:
        print(f"{result.phone_number} ({result.sid}) already points at this bridge; no change")
        return 0
    verb = "changed" if result.applied else "would change (dry run)"
    print(f"{result.phone_number} ({result.sid}) {verb}:")
    for change in result.changes:
        print(f"  {change.field}: {change.old or '(empty)'} -> {change.new or '(cleared)'}")
    return 0


def call(settings: Settings, args: argparse.Namespace) -> int:
    if args.profile:
        _check_profile(settings, args.profile, args.numbers)
    url = _bridge_url(settings, args.url)
    rest = TwilioRest(settings, api_base=args.api_base)
    placed = rest.call(args.to, args.from_, url, profile=args.profile)
    profile = args.profile or "chosen by the calling number"
    print(f"calling {args.to} from {args.from_} (profile: {profile}): {placed.sid} {placed.status}")
    return 0


def _check_profile(settings: Settings, name: str, given: str | None) -> None:
    """Catch a misspelt profile here rather than as a refused call."""
    path = numbers_path(settings, given)
    directory = numbers.builtin(settings) if path is None else numbers.load(path, settings)
    if directory.named(name) is None:
        known = ", ".join(sorted(directory.profiles))
        raise ConfigError([f"--profile: no profile {name!r} in {path or 'built-in'} ({known})"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge twilio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    attaching = commands.add_parser("attach", help="point a number's voice URL at this bridge")
    attaching.add_argument("number", help="one of your Twilio numbers, E.164")
    attaching.add_argument("--dry-run", action="store_true", help="show changes, change nothing")
    calling = commands.add_parser("call", help="ring a number and connect it to the assistant")
    calling.add_argument("to", help="number to ring")
    calling.add_argument("--from", dest="from_", required=True, help="your Twilio number")
    calling.add_argument("--profile", default="", help="profile to use (default: by --from)")
    calling.add_argument("--numbers", help="numbers file to check --profile against")
    for command in (attaching, calling):
        command.add_argument("--url", help="bridge public base URL (default: $BRIDGE_PUBLIC_URL)")
        command.add_argument(
            "--api-base", help="Twilio REST API base URL (default: https://api.twilio.com)"
        )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = tool_settings()
        return attach(settings, args) if args.command == "attach" else call(settings, args)
    except ConfigError as exc:
        print(f"bridge twilio {args.command}: configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except RestError as exc:
        print(f"bridge twilio {args.command}: {exc}", file=sys.stderr)
        return 1

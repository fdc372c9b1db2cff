"""`bridge numbers list | check [FILE] | reload`: the per-number profiles from the command line.

Exit codes: 0 fine, 1 the running server could not be reached or refused, 2 configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from bridge import numbers
from bridge.errors import ConfigError
from bridge.profiles import CallerRules
from bridge.settings import Settings

RELOAD_PATH = "/api/numbers/reload"
GREETING_WIDTH = 48


def tool_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for commands that never talk to OpenAI, so the API key may be absent."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("OPENAI_API_KEY"):
        env["OPENAI_API_KEY"] = "unused-by-this-command"
    return Settings.from_environ(env)


def numbers_path(settings: Settings, given: str | None = None) -> Path | None:
    """The file a command works on: given, else BRIDGE_NUMBERS, else the default if present."""
    if given or settings.numbers_file:
        return Path(given or settings.numbers_file or "")
    return numbers.DEFAULT_PATH if numbers.DEFAULT_PATH.is_file() else None


def _directory(settings: Settings, given: str | None) -> numbers.Directory:
    path = numbers_path(settings, given)
    return numbers.builtin(settings) if path is None else numbers.load(path, settings)


def _callers(rules: CallerRules) -> str:
    if rules.allow:
        return "only " + ", ".join(rules.allow)
    if rules.deny:
        return "not " + ", ".join(rules.deny)
    return "anyone"


def _greeting(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return "(waits for the caller)"
    return text if len(text) <= GREETING_WIDTH else text[: GREETING_WIDTH - 1] + "…"


def list_numbers(settings: Settings, given: str | None) -> int:
    directory = _directory(settings, given)
    header = ("NUMBER", "PROFILE", "VOICE", "GREETING", "CALLERS")
    rows = [
        (
            number,
            profile.name,
            profile.voice,
            _greeting(profile.greeting),
            _callers(profile.callers),
        )
        for number, profile in directory.rows()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    print(f"\n* = every other number. Source: {directory.source or 'built-in default profile'}")
    return 0


def check(settings: Settings, given: str | None) -> int:
    path = numbers_path(settings, given)
    if path is None:
        print(f"no numbers file ({numbers.DEFAULT_PATH}): the built-in default serves every number")
        return 0
    directory = numbers.load(path, settings)
    names = ", ".join(sorted(directory.profiles))
    print(
        f"{path}: ok, {len(directory.profiles)} profiles ({names}), "
        f"{len(directory.numbers)} numbers"
    )
    return 0


def reload(settings: Settings, url: str, timeout: float) -> int:
    """Ask the running server to reload (as SIGHUP does), with the admin token if configured."""
    headers = {}
    if settings.admin_token is not None:
        headers["Authorization"] = f"Bearer {settings.admin_token.get_secret_value()}"
    try:
        response = httpx.post(url.rstrip("/") + RELOAD_PATH, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        print(f"bridge numbers reload: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if response.status_code == 422:
        print("the server refused the new file and keeps the old one:", file=sys.stderr)
        for problem in response.json().get("problems", []):
            print(f"  {problem}", file=sys.stderr)
        return 2
    if response.status_code != 200:
        print(
            f"bridge numbers reload: HTTP {response.status_code}: {response.text}", file=sys.stderr
        )
        return 1
    body = response.json()
    print(
        f"reloaded {body.get('source') or 'built-in defaults'}: "
        f"profiles {', '.join(body.get('profiles', []))}; {body.get('numbers', 0)} numbers"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge numbers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="numbers -> profile, voice, greeting, callers")
    listing.add_argument("--numbers", help="numbers file (default: $BRIDGE_NUMBERS)")
    checking = commands.add_parser("check", help="validate a numbers file")
    checking.add_argument("file", nargs="?", help="default: $BRIDGE_NUMBERS or config/numbers.toml")
    reloading = commands.add_parser("reload", help="make a running server reload its file")
    reloading.add_argument("--url", default="http://127.0.0.1:8080", help="the server's address")
    reloading.add_argument("--timeout", type=float, default=10.0)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = tool_settings()
        if args.command == "list":
            return list_numbers(settings, args.numbers)
        if args.command == "check":
            return check(settings, args.file)
        return reload(settings, args.url, args.timeout)
    except ConfigError as exc:
        print(f"bridge numbers {args.command}: configuration error:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2

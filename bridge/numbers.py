"""The number directory: which profile answers which called number, from `config/numbers.toml`.

A `Directory` is one validated file and never changes. `Numbers` holds the current one and swaps
in a new one whole (on SIGHUP, the admin endpoint, or a change on disk) only if it validates, so
a live call keeps the profile it started with and an invalid file changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError
from bridge.profiles import Fields, Profile, normalise_number, profile_from_table
from bridge.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path("config/numbers.toml")
DEFAULT_PROFILE = "default"
WATCH_SECONDS = 2.0  # how often the file (and its instructions files) are checked for changes
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Stamp = tuple[str, int, int]  # path, mtime_ns, size (-1, -1 when missing)


@dataclasses.dataclass(frozen=True, slots=True)
class Routing:
    """The voice webhook's decision for one call."""

    profile: Profile
    admitted: bool
    reason: str  # how the profile was chosen, or why the call is refused


@dataclasses.dataclass(frozen=True, slots=True)
class Directory:
    """One validated numbers file (or the built-in default when there is none)."""

    source: str | None
    default: Profile
    profiles: Mapping[str, Profile]  # by name, the default included
    numbers: Mapping[str, str]  # E.164 number -> profile name
    stamps: tuple[Stamp, ...] = ()

    def named(self, name: str) -> Profile | None:
        return self.profiles.get(name)

    def for_number(self, number: str) -> Profile:
        """The profile of a number in any common format; the default for unknown numbers."""
        try:
            name = self.numbers.get(normalise_number(number))
        except ValueError:
            name = None  # a SIP URI, `client:...`: not a phone number
        return self.profiles[name] if name is not None else self.default

    def route(self, *, caller: str, called: str, direction: str, requested: str = "") -> Routing:
        """Choose the profile for a call and apply its caller rules.

        Inbound calls are chosen by the called number; calls we placed (`outbound-api`) by the
        number we called from, since `To` is then the person we rang. An explicit profile (the
        `?profile=` of an outbound call's webhook URL, covered by Twilio's signature) wins.
        """
        outbound = direction.startswith("outbound")
        if requested:
            profile = self.named(requested)
            if profile is None:
                return Routing(self.default, False, f'unknown profile "{requested}"')
            how = "requested"
        else:
            profile = self.for_number(caller if outbound else called)
            how = "by number" if profile is not self.default else "default"
        if not outbound and not profile.callers.admits(caller):
            return Routing(profile, False, f'caller not allowed by profile "{profile.name}"')
        return Routing(profile, True, how)

    def rows(self) -> list[tuple[str, Profile]]:
        """(number, profile) for every listed number, sorted; the default last as `*`."""
        rows = [(number, self.profiles[name]) for number, name in sorted(self.numbers.items())]
        return [*rows, ("*", self.default)]


def builtin(settings: Settings, awaiting: Path = DEFAULT_PATH) -> Directory:
    """No numbers file: one profile, from the environment, serves every number.

    `awaiting` is the path watched for a file that appears later.
    """
    default = Profile.from_settings(settings)
    return Directory(None, default, {DEFAULT_PROFILE: default}, {}, _stamps([awaiting]))


def load(path: Path, settings: Settings) -> Directory:
    """Read and validate a numbers file; ConfigError lists every problem (file, profile, field)."""
    source = str(path)
    before = _stamps([path])
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text ({exc.reason})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from exc
    problems: list[str] = []
    top = Fields(data, f"{source}: ", problems)
    top.unknown(("profiles",))
    tables = top.subtable("profiles", "profiles")
    entries: dict[str, Any] = dict(tables.table) if tables is not None else {}
    base = Profile.from_settings(settings)
    profiles: dict[str, Profile] = {}
    numbers: dict[str, str] = {}
    files: list[Path] = []
    # The default goes first: every other profile starts from it.
    for name in sorted(entries, key=lambda name: name != DEFAULT_PROFILE):
        where = f'{source}: profile "{name}": '
        table = entries[name]
        if not isinstance(table, dict):
            problems.append(f"{where}must be a table ([profiles.{name}])")
            continue
        if not _NAME.match(name):
            problems.append(f"{where}name must be lowercase letters, digits, - or _")
        fields = Fields(table, where, problems)
        inherit = base if name == DEFAULT_PROFILE else profiles.get(DEFAULT_PROFILE, base)
        profiles[name] = profile_from_table(name, fields, inherit, path.parent, files)
        for index, text in enumerate(fields.strings("numbers", "numbers") or []):
            try:
                number = normalise_number(text)
            except ValueError as exc:
                fields.problem(f"numbers[{index}]", str(exc))
                continue
            owner = numbers.setdefault(number, name)
            if owner != name:
                fields.problem(
                    f"numbers[{index}]", f'{number} already belongs to profile "{owner}"'
                )
    if problems:
        raise ConfigError(problems)
    default = profiles.setdefault(DEFAULT_PROFILE, base)
    return Directory(source, default, profiles, numbers, before + _stamps(files))


def _stamps(paths: list[Path]) -> tuple[Stamp, ...]:
    stamps = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            stamps.append((str(path), -1, -1))
        else:
            stamps.append((str(path), status.st_mtime_ns, status.st_size))
    return tuple(stamps)


class Numbers:
    """The directory in force; reloads swap it atomically (one reference, on the event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.numbers_file) if settings.numbers_file else None
        self.current = builtin(settings)
        self.current = self._load()
        self.watch_seconds = WATCH_SECONDS
        self._rejected: tuple[Stamp, ...] | None = None  # a bad file is reported once
        if self.current.source is None and self.path is not None:
            logger.warning(
                "numbers file %s does not exist: the built-in default profile serves every "
                "number until it appears",
                self.path,
            )
        elif self.current.source is None:
            logger.info("no numbers file: the built-in default profile serves every number")
        else:
            logger.info(
                "numbers from %s: %d profiles, %d numbers",
                self.current.source,
                len(self.current.profiles),
                len(self.current.numbers),
            )

    def _load(self) -> Directory:
        if self.path is None and DEFAULT_PATH.is_file():
            self.path = DEFAULT_PATH  # from then on, like a configured path
        if self.path is None:
            return builtin(self.settings)
        # A file not there yet leaves the built-in default in force until it appears; a file
        # that disappears after loading is an error, so the last good one stays.
        if self.current.source is None and not self.path.exists():
            return builtin(self.settings, self.path)
        return load(self.path, self.settings)

    def reload(self, trigger: str) -> Directory:
        """Validate the file again and swap it in; if invalid, log, keep the old one, re-raise."""
        try:
            directory = self._load()
        except ConfigError as exc:
            self._rejected = self._disk_stamps()
            logger.error(
                "numbers reload (%s) rejected, the previous configuration stays in force: %s",
                trigger,
                "; ".join(exc.problems),
            )
            raise
        self.current = directory
        self._rejected = None
        logger.info(
            "numbers reloaded (%s) from %s: %d profiles, %d numbers",
            trigger,
            directory.source or "built-in defaults",
            len(directory.profiles),
            len(directory.numbers),
        )
        return directory

    def _disk_stamps(self) -> tuple[Stamp, ...]:
        paths = [Path(path) for path, _, _ in self.current.stamps]
        return _stamps(paths or [self.path or DEFAULT_PATH])

    def changed_on_disk(self) -> bool:
        """Whether the file or an instructions file it reads differs from what is loaded."""
        stamps = self._disk_stamps()
        return stamps != self.current.stamps and stamps != self._rejected

    async def watch(self) -> None:
        """Reload whenever the files change (a Kubernetes ConfigMap update, an editor's save)."""
        while True:
            await asyncio.sleep(self.watch_seconds)
            try:
                if self.changed_on_disk():
                    self.reload("file changed")
            except ConfigError:
                pass  # logged by reload; the old file stays in force
            except Exception:
                # The watcher must not take the server down with it; calls are unaffected.
                logger.exception("watching the numbers file failed")


_on_hangup: set[Numbers] = set()
_hangup_loop: asyncio.AbstractEventLoop | None = None


@contextlib.contextmanager
def reload_on_sighup(numbers: Numbers) -> Iterator[None]:
    """While entered, SIGHUP reloads `numbers` (and any other directory entered in this process).

    One handler serves every directory; only the main thread's event loop can take signals, so
    elsewhere this does nothing.
    """
    global _hangup_loop
    if _hangup_loop is None and hasattr(signal, "SIGHUP"):
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, _hangup)
        except (RuntimeError, ValueError):
            logger.debug("SIGHUP reload unavailable (not the main thread)")
        else:
            _hangup_loop = loop
    _on_hangup.add(numbers)
    try:
        yield
    finally:
        _on_hangup.discard(numbers)
        if not _on_hangup and _hangup_loop is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                _hangup_loop.remove_signal_handler(signal.SIGHUP)
            _hangup_loop = None


def _hangup() -> None:
    for numbers in list(_on_hangup):
        with contextlib.suppress(ConfigError):  # logged by reload; the old file stays in force
            numbers.reload("SIGHUP")

"""The settings of ``edgeclin serve``, checked before anything is loaded or bound.

Every refusal is an ``EdgeclinError`` with a one-line message, which the command line prints
before exiting with 2: a server that would listen beyond loopback with no key, a key file that
is missing, empty or too short to be a secret, TLS files that do not load, limits that cannot
hold together.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from edgeclin.engines import BACKENDS
from edgeclin.errors import EdgeclinError

MIN_KEY_CHARACTERS = 16  # a bearer token shorter than this is guessable, not a secret
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # safe in a URL path segment and a metric label
KEY_HINT = "e.g. openssl rand -hex 32 > key.txt"


@dataclass
class ServeConfig:
    """Options of ``edgeclin serve`` (the command line's defaults)."""

    quiet: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_file: str | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_texts: int = 256
    max_body_bytes: int = 1_000_000
    threads: int | None = None
    backend: str = "auto"
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        self._check_numbers()
        if self.backend not in ("auto", *BACKENDS):
            raise EdgeclinError(f"unknown backend {self.backend!r} (choose from auto, {', '.join(BACKENDS)})")
        # read once here: the key in memory is the one that was checked
        self._api_key = read_api_key(self.api_key_file) if self.api_key_file else None
        if self._api_key is None and not is_loopback(self.host):
            raise EdgeclinError(f"refusing to listen on {self.host} without --api-key-file: anyone who can reach "
                                f"it could send and read notes ({KEY_HINT})")
        self._check_tls()

    def _check_numbers(self) -> None:
        if not 0 <= self.port <= 65535:
            raise EdgeclinError(f"--port must be between 0 and 65535, not {self.port}")
        for name in ("max_batch", "max_queue", "max_texts", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise EdgeclinError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise EdgeclinError(f"--max-wait-ms must not be negative, not {self.max_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise EdgeclinError(f"--threads must be at least 1, not {self.threads}")
        if self.max_queue < self.max_texts:
            raise EdgeclinError(f"--max-queue ({self.max_queue}) must be at least --max-texts ({self.max_texts}): "
                                "a request of --max-texts texts could never be queued")

    def _check_tls(self) -> None:
        if self.ssl_keyfile and not self.ssl_certfile:
            raise EdgeclinError("--ssl-keyfile needs --ssl-certfile")
        if not self.ssl_certfile:
            return
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path and not Path(path).is_file():
                raise EdgeclinError(f"no such file: {path}")
        try:  # the same check uvicorn makes, but before any model loads and with a one-line message
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise EdgeclinError(f"cannot use the TLS certificate {self.ssl_certfile}"
                                f"{' and key ' + self.ssl_keyfile if self.ssl_keyfile else ''}: "
                                f"{exc.strerror or exc}") from None

    @property
    def api_key(self) -> bytes | None:
        return self._api_key

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_api_key(path: str | Path) -> bytes:
    """The bearer token in a file (surrounding whitespace ignored)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise EdgeclinError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    if not key:
        raise EdgeclinError(f"the API key file {path} is empty ({KEY_HINT})")
    if len(key) < MIN_KEY_CHARACTERS:
        raise EdgeclinError(f"the API key in {path} has {len(key)} characters; use at least {MIN_KEY_CHARACTERS} "
                            f"({KEY_HINT})")
    if any(c < 0x21 or c > 0x7E for c in key):
        raise EdgeclinError(f"the API key in {path} must be printable ASCII without spaces (it travels in an "
                            "HTTP header)")
    return key


def bundle_specs(arguments: list[str]) -> list[tuple[str, Path]]:
    """(model name, bundle folder) of each BUNDLE argument: ``PATH`` (named after its folder) or ``NAME=PATH``."""
    if not arguments:
        raise EdgeclinError("give at least one bundle to serve")
    specs: list[tuple[str, Path]] = []
    for argument in arguments:
        name, sep, path = argument.partition("=")
        if not sep or "/" in name or "\\" in name:  # a path that happens to hold "="
            name, path = "", argument
        folder = Path(path)
        name = name or folder.resolve().name
        if not MODEL_NAME.fullmatch(name):
            raise EdgeclinError(f"{argument}: model name {name!r} must be letters, digits, '.', '_' or '-' "
                                "(give NAME=PATH)")
        if name in (n for n, _ in specs):
            raise EdgeclinError(f"two bundles are named {name!r}: give one of them another name with NAME=PATH")
        specs.append((name, folder))
    return specs

"""A farm's identity: its name and its secret, and the join code that carries them.

Every peer of a farm holds the same secret. Peers sign their requests with it
(see ``auth.py``), so the secret is what makes a computer part of the farm.
The first peer generates it on first run; other computers adopt it from a
*join code* printed by any peer (``flamenco-peer farm join-code``).

The identity lives in ``farm.json`` in the data dir, readable by this user
only. Adopting another farm's identity keeps the old file as a backup.

Join code format (version 1)::

    FP1-XXXXX-XXXXX-...-XXX

``FP1`` names the format. The rest is Crockford base32 (case-insensitive;
O reads as 0, I and L as 1; dashes and white space are ignored) of::

    secret (16 bytes)
    name length (1 byte) + name (UTF-8)
    seed kind (1 byte): 0 none; 4 IPv4 (4 bytes + port); 6 IPv6 (16 bytes
        + port); 72 ("H") host name (1 length byte + ASCII + port); ports are
        2 bytes big-endian
    checksum (4 bytes): the first 4 bytes of sha256(b"FP1" + everything above)

The farm id is derived from the secret, so a join code needs not carry it and
two farms with the same name still have different ids.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .peer_cache import SeedError
from .peer_cache import parse_seed as seed_url

log = logging.getLogger(__name__)

FARM_FILE = "farm.json"
FILE_FORMAT = 1
SECRET_BYTES = 16
MAX_NAME_BYTES = 64
JOIN_CODE_VERSION = 1
JOIN_CODE_PREFIX = f"FP{JOIN_CODE_VERSION}"
_CHECKSUM_BYTES = 4
_GROUP = 5

_HOW_TO_GET_A_CODE = "copy it again from `flamenco-peer farm join-code` on a farm peer"

# Crockford's base32: no I, L, O or U, so what a person reads is what they type.
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {ch: i for i, ch in enumerate(_ALPHABET)}
_DECODE.update({"O": 0, "I": 1, "L": 1})

_SEED_NONE = 0
_SEED_IPV4 = 4
_SEED_IPV6 = 6
_SEED_HOST = ord("H")


class IdentityError(Exception):
    """A farm identity or join code that cannot be used; the message says why and what to do."""


class JoinCodeError(IdentityError):
    pass


@dataclass(frozen=True)
class FarmIdentity:
    name: str
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise IdentityError(f"a farm secret has {SECRET_BYTES} bytes, this one has {len(self.secret)}")
        check_farm_name(self.name)

    @classmethod
    def generate(cls, name: str) -> FarmIdentity:
        return cls(name=name, secret=secrets.token_bytes(SECRET_BYTES))

    # Computed once: it is in every signed request. (A frozen dataclass without
    # slots has an instance dict, which cached_property writes past __setattr__;
    # fields alone still decide equality and hash.)
    @functools.cached_property
    def farm_id(self) -> str:
        """Stable public id of the farm; reveals nothing about the secret."""
        return self.derive_key("farm id")[:8].hex()

    def derive_key(self, purpose: str) -> bytes:
        """A key for one purpose, so a value made for one use is useless for another."""
        return hmac.new(self.secret, b"flamenco-peer/" + purpose.encode(), hashlib.sha256).digest()

    def join_code(self, seed: str | None = None) -> str:
        """The code another computer types to join this farm; ``seed`` is a ``host:port``
        of a farm peer, for networks where multicast discovery does not work."""
        payload = bytearray(self.secret)
        name = self.name.encode("utf-8")
        payload.append(len(name))
        payload += name
        payload += _encode_seed(seed)
        payload += _checksum(bytes(payload))
        text = _b32encode(bytes(payload))
        groups = [text[i:i + _GROUP] for i in range(0, len(text), _GROUP)]
        return "-".join([JOIN_CODE_PREFIX, *groups])

    def accepts_join_code(self, code: str) -> bool:
        """True if ``code`` is a join code of this farm (for a dashboard login, say)."""
        try:
            other = parse_join_code(code).identity
        except JoinCodeError:
            return False
        return hmac.compare_digest(other.secret, self.secret)

    def __repr__(self) -> str:  # never print the secret into a log by accident
        return f"FarmIdentity(name={self.name!r}, farm_id={self.farm_id!r})"


@dataclass(frozen=True)
class JoinCode:
    identity: FarmIdentity
    seed: str | None  # "host:port" of a farm peer, or None


@dataclass(frozen=True)
class JoinResult:
    identity: FarmIdentity
    seed: str | None
    changed: bool  # False when this peer already belonged to that farm under that name
    previous: FarmIdentity | None
    backup: Path | None  # where the replaced farm.json was kept


# --- names and seeds --------------------------------------------------------------


def check_farm_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise IdentityError("a farm name cannot be empty; pick a name such as \"studio\"")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise IdentityError(f"farm name {name!r} contains control characters; use letters, digits and spaces")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise IdentityError(f"farm name {name!r} is too long: at most {MAX_NAME_BYTES} bytes of UTF-8")
    return name


def default_farm_name() -> str:
    host = socket.gethostname().split(".")[0] or "my"
    name = f"{host} farm"
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        host = host[:-1]
        name = f"{host} farm"
    return name


def parse_seed(seed: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into (host, port), refusing anything a
    peer could not dial: the same rules as seeds in the config and ``--join``."""
    try:
        url = seed_url(seed)
    except SeedError as exc:
        raise IdentityError(str(exc)) from None
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None  # seed_url guarantees both
    return parts.hostname, parts.port


def _format_seed(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _encode_seed(seed: str | None) -> bytes:
    if seed is None:
        return bytes([_SEED_NONE])
    host, port = parse_seed(seed)
    port_bytes = port.to_bytes(2, "big")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii")
        return bytes([_SEED_HOST, len(name)]) + name + port_bytes
    kind = _SEED_IPV4 if addr.version == 4 else _SEED_IPV6
    return bytes([kind]) + addr.packed + port_bytes


# --- base32 and checksum -----------------------------------------------------------


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(JOIN_CODE_PREFIX.encode() + payload).digest()[:_CHECKSUM_BYTES]


def _b32encode(data: bytes) -> str:
    bits = int.from_bytes(data, "big")
    nbits = len(data) * 8
    pad = (-nbits) % 5
    bits <<= pad
    count = (nbits + pad) // 5
    return "".join(_ALPHABET[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count))


def _b32decode(text: str) -> bytes:
    bits = 0
    for ch in text:
        bits = (bits << 5) | _DECODE[ch]
    nbits = len(text) * 5
    nbytes = nbits // 8
    return (bits >> (nbits - nbytes * 8)).to_bytes(nbytes, "big")


# --- parsing a join code -----------------------------------------------------------


# One digit of version, so "FP1" followed by data that starts with a digit stays unambiguous.
_PREFIX = re.compile(r"^FP\s*(\d)\s*[-:]?", re.IGNORECASE)


def parse_join_code(code: str) -> JoinCode:
    """Read a join code as a person typed or pasted it; every mistake gets a clear error."""
    if not isinstance(code, str) or not code.strip():
        raise JoinCodeError(f"the join code is empty; {_HOW_TO_GET_A_CODE}")
    text = code.strip().strip("\"'`")
    match = _PREFIX.match(text)
    if not match:
        raise JoinCodeError(
            f"this is not a Flamenco Peer join code (those start with {JOIN_CODE_PREFIX}-); {_HOW_TO_GET_A_CODE}"
        )
    version = int(match.group(1))
    if version != JOIN_CODE_VERSION:
        newer = "a newer" if version > JOIN_CODE_VERSION else "an older"
        raise JoinCodeError(
            f"this join code has format FP{version}, from {newer} flamenco-peer; this one reads "
            f"{JOIN_CODE_PREFIX} codes: run the same flamenco-peer version on every peer"
        )
    body = re.sub(r"[\s-]", "", text[match.end():]).upper()
    for position, ch in enumerate(body, start=1):
        if ch not in _DECODE:
            raise JoinCodeError(
                f"join code is mistyped: {ch!r} (character {position} after {JOIN_CODE_PREFIX}-) cannot "
                f"appear in a join code; {_HOW_TO_GET_A_CODE}"
            )
    data = _b32decode(body)
    mistyped = f"join code is mistyped: checksum mismatch — {_HOW_TO_GET_A_CODE}"
    if len(data) < SECRET_BYTES + 2 + _CHECKSUM_BYTES:
        raise JoinCodeError(f"join code is mistyped: it is too short — {_HOW_TO_GET_A_CODE}")
    payload, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if not hmac.compare_digest(_checksum(payload), checksum):
        raise JoinCodeError(mistyped)
    try:
        return _decode_payload(payload)
    except (IndexError, ValueError, IdentityError) as exc:
        # The checksum matched, so a person typed it right: the maker wrote something odd.
        raise JoinCodeError(
            f"join code is damaged ({exc}); make a new one with `flamenco-peer farm join-code` on a farm peer"
        ) from None


def _decode_payload(payload: bytes) -> JoinCode:
    secret = payload[:SECRET_BYTES]
    pos = SECRET_BYTES
    name_len = payload[pos]
    pos += 1
    name = payload[pos:pos + name_len].decode("utf-8")
    if len(name.encode("utf-8")) != name_len:
        raise ValueError("the farm name is cut short")
    pos += name_len
    kind = payload[pos]
    pos += 1
    seed: str | None
    if kind == _SEED_NONE:
        seed = None
    elif kind in (_SEED_IPV4, _SEED_IPV6):
        size = 4 if kind == _SEED_IPV4 else 16
        raw = payload[pos:pos + size]
        if len(raw) != size:
            raise ValueError("the seed address is cut short")
        host = str(ipaddress.ip_address(raw))
        pos += size
        seed = _format_seed(host, int.from_bytes(payload[pos:pos + 2], "big"))
        pos += 2
    elif kind == _SEED_HOST:
        host_len = payload[pos]
        pos += 1
        host = payload[pos:pos + host_len].decode("ascii")
        pos += host_len
        seed = _format_seed(host, int.from_bytes(payload[pos:pos + 2], "big"))
        pos += 2
    else:
        raise ValueError(f"unknown seed kind {kind}")
    if pos != len(payload):
        raise ValueError("it has extra bytes at the end")
    if seed is not None:
        parse_seed(seed)
    return JoinCode(FarmIdentity(name=name, secret=secret), seed)


# --- the farm file ----------------------------------------------------------------


def farm_file(data_dir: Path) -> Path:
    return data_dir / FARM_FILE


def _document(identity: FarmIdentity) -> bytes:
    doc = {
        "format": FILE_FORMAT,
        "note": "This farm's secret: anyone with it can join the farm. Keep this file private.",
        "name": identity.name,
        "farm_id": identity.farm_id,
        "secret": identity.secret.hex(),
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_private_tmp(path: Path, content: bytes) -> Path:
    """Write ``content`` to a fresh temporary file beside ``path``, private from the first byte."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: a power cut must not bring back the old farm file."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(path: Path, exc: OSError, doing: str) -> IdentityError:
    return IdentityError(
        f"cannot {doing} {path} ({exc.strerror or exc}); check that this user can write the data dir, "
        "or pass --data-dir with a folder this user owns"
    )


def load(data_dir: Path) -> FarmIdentity | None:
    """The stored identity, or None if this peer has none yet."""
    path = farm_file(data_dir)
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise IdentityError(
            f"{path} is a folder, not the farm file; move it away so a farm file can be written"
        ) from None
    except OSError as exc:
        raise _os_error(path, exc, "read") from None
    identity = _parse_document(path, raw)
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        log.warning("%s was readable by other users; making it private (0600)", path)
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            log.warning("cannot make %s private: %s", path, exc)
    return identity


def _parse_document(path: Path, raw: bytes) -> FarmIdentity:
    fix = (f"restore it from a {FARM_FILE}.bak-* file beside it, or join the farm again with "
           "`flamenco-peer run --join-code CODE`")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IdentityError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise IdentityError(f"{path} must hold a JSON object; {fix}")
    if doc.get("format") != FILE_FORMAT:
        raise IdentityError(
            f"{path} has format {doc.get('format')!r}; this flamenco-peer reads format {FILE_FORMAT}; "
            "run the flamenco-peer version that wrote it, or " + fix
        )
    name, secret_hex = doc.get("name"), doc.get("secret")
    if not isinstance(name, str) or not isinstance(secret_hex, str):
        raise IdentityError(f"{path} needs string fields \"name\" and \"secret\"; {fix}")
    try:
        secret = bytes.fromhex(secret_hex)
        identity = FarmIdentity(name=name, secret=secret)
    except (ValueError, IdentityError) as exc:
        raise IdentityError(f"{path} holds an unusable farm identity ({exc}); {fix}") from None
    stored_id = doc.get("farm_id")
    if stored_id is not None and stored_id != identity.farm_id:
        raise IdentityError(
            f"{path} was edited: farm_id {stored_id!r} does not belong to its secret (that is "
            f"{identity.farm_id!r}); {fix}"
        )
    return identity


def load_or_create(data_dir: Path, name: str | None = None) -> FarmIdentity:
    """The stored identity; on first run, a new farm named ``name`` (or after this computer).

    ``name`` only names a new farm: an existing identity is returned unchanged.
    Two processes starting at once end up with the same identity: the file is
    created only if absent, and the loser reads the winner's.
    """
    existing = load(data_dir)
    if existing is not None:
        return existing
    identity = FarmIdentity.generate(check_farm_name(name) if name is not None else default_farm_name())
    path = farm_file(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = _write_private_tmp(path, _document(identity))
    except OSError as exc:
        raise _os_error(path, exc, "write") from None
    try:
        os.link(tmp, path)  # fails if another process created the file first
        _fsync_dir(data_dir)
    except FileExistsError:
        winner = load(data_dir)
        assert winner is not None
        return winner
    except OSError as exc:
        raise _os_error(path, exc, "write") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created farm %r (id %s) in %s", identity.name, identity.farm_id, path)
    return identity


def adopt(data_dir: Path, identity: FarmIdentity) -> tuple[FarmIdentity | None, Path | None]:
    """Make ``identity`` this peer's farm; returns the previous identity and its backup file."""
    path = farm_file(data_dir)
    try:
        previous = load(data_dir)
    except IdentityError:
        previous = None  # a broken file: joining is its fix; it is kept as a backup below
    if previous == identity:
        return previous, None
    backup: Path | None = None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            backup = path.with_name(f"{FARM_FILE}.bak-{stamp}")
            n = 1
            while backup.exists():
                n += 1
                backup = path.with_name(f"{FARM_FILE}.bak-{stamp}-{n}")
            old_tmp = _write_private_tmp(backup, path.read_bytes())
            os.replace(old_tmp, backup)
        tmp = _write_private_tmp(path, _document(identity))
        os.replace(tmp, path)
        _fsync_dir(data_dir)
    except OSError as exc:
        raise _os_error(path, exc, "write") from None
    log.info(
        "this peer now belongs to farm %r (id %s)%s", identity.name, identity.farm_id,
        f"; the previous farm file is kept as {backup}" if backup else "",
    )
    return previous, backup


def join(data_dir: Path, code: str) -> JoinResult:
    """Adopt the farm a join code names (``flamenco-peer run --join-code CODE``)."""
    parsed = parse_join_code(code)
    previous, backup = adopt(data_dir, parsed.identity)
    return JoinResult(
        identity=parsed.identity, seed=parsed.seed, changed=previous != parsed.identity,
        previous=previous, backup=backup,
    )

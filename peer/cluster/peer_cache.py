"""Where to look for peers when multicast does not reach them: seeds and last-known peers.

mDNS (:mod:`peer.cluster.discovery`) finds peers on the same network segment,
but many office and Wi-Fi networks drop multicast. Two fallbacks cover that:

- **Seeds**: addresses the user gives (``--join host:port`` or the config),
  parsed by :func:`parse_seed` into ``http://host:port`` URLs.
- **The peer cache**: ``peers.json`` in the data dir remembers every peer of
  the farm this peer has talked to (URL, farm id, when it was last seen), so
  a restarted peer can call its old friends directly.

:func:`bootstrap_urls` merges both into the list of URLs to try at start-up.

The cache file is small JSON, written atomically (temporary file, then
rename), so a crash mid-write leaves the old file. A file that cannot be read
or parsed is not an error: the cache starts empty and a warning names the
file. Entries not seen for ``max_age_s`` (30 days by default) are dropped.
Reads and writes are plain blocking file I/O on a file of a few KB; call
:meth:`PeerCache.save` from ``asyncio.to_thread`` in the event loop.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

CACHE_FILE = "peers.json"
_FORMAT_VERSION = 1
DEFAULT_MAX_AGE_S = 30 * 24 * 3600.0
DEFAULT_MAX_ENTRIES = 256
# DNS labels, plus "_" which Windows machine names may carry.
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_SEED_HOW = "write it as host:port or http://host:port, for example 192.168.1.20:8780"


class SeedError(ValueError):
    """A seed address that cannot be used; the message says why and how to write it."""


@dataclass(frozen=True)
class KnownPeer:
    peer_id: str
    url: str
    farm_id: str
    last_seen: float  # Unix time


def parse_seed(text: str) -> str:
    """``host:port``, ``[v6]:port`` or ``http://host:port[/]`` -> ``http://host:port``.

    Raises :class:`SeedError` for anything a peer could not dial: no port, a
    port outside 1-65535, another scheme, a path, or a malformed host.
    """
    if not isinstance(text, str):
        raise SeedError(f"seed address {text!r} is not text; {_SEED_HOW}")
    raw = text.strip()
    if not raw:
        raise SeedError(f"empty seed address; {_SEED_HOW}")
    if any(ch.isspace() for ch in raw):
        raise SeedError(f"seed address {text!r} contains spaces; {_SEED_HOW}")
    if "://" in raw:
        scheme = raw.split("://", 1)[0].lower()
        if scheme != "http":
            raise SeedError(f"seed address {text!r} uses {scheme}://, but peers speak plain http://; {_SEED_HOW}")
        raw = raw.split("://", 1)[1]
    if raw.count(":") > 1 and not raw.startswith("["):
        raise SeedError(f"seed address {text!r}: put an IPv6 address in brackets, for example [fd00::5]:8780")
    try:
        parts = urlsplit("http://" + raw)
        port = parts.port
    except ValueError:
        raise SeedError(f"seed address {text!r} has no valid port (1-65535); {_SEED_HOW}") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise SeedError(f"seed address {text!r} has a path or query; give only host and port; {_SEED_HOW}")
    if parts.username is not None or parts.password is not None:
        raise SeedError(f"seed address {text!r} contains a user name; give only host and port; {_SEED_HOW}")
    host = parts.hostname or ""
    if not host:
        raise SeedError(f"seed address {text!r} has no host; {_SEED_HOW}")
    if port is None:
        raise SeedError(f"seed address {text!r} has no port; {_SEED_HOW} (8780 is the default peer port)")
    if not 0 < port < 65536:
        raise SeedError(f"seed address {text!r} has no valid port (1-65535); {_SEED_HOW}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise SeedError(f"seed address {text!r}: {host!r} is neither an IP address nor a host name; "
                            f"{_SEED_HOW}") from None
        return f"http://{host.lower().rstrip('.')}:{port}"
    if address.is_unspecified or address.is_multicast:
        raise SeedError(f"seed address {text!r}: {host} cannot be dialled; give the address of a peer; {_SEED_HOW}")
    shown = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"http://{shown}:{port}"


def parse_seeds(texts: Iterable[str]) -> list[str]:
    """Parse several seeds (config list plus ``--join`` flags), dropping duplicates, keeping order."""
    urls: list[str] = []
    for text in texts:
        url = parse_seed(text)
        if url not in urls:
            urls.append(url)
    return urls


class PeerCache:
    """Last-known peers of this peer's farm(s), persisted in a JSON file. See the module docstring."""

    def __init__(self, path: Path, *, max_age_s: float = DEFAULT_MAX_AGE_S,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._peers: dict[str, KnownPeer] = {}
        self._dirty = False
        self._load()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PeerCache:
        return cls(Path(data_dir) / CACHE_FILE)

    # --- reading ------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("peer cache %s cannot be read (%s); starting with no known peers", self.path, exc)
            return
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            log.warning("peer cache %s is not valid JSON (%s); starting with no known peers. "
                        "It is rewritten on the next save.", self.path, exc)
            return
        entries = document.get("peers") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            log.warning("peer cache %s has no \"peers\" object; starting with no known peers. "
                        "It is rewritten on the next save.", self.path)
            return
        skipped = 0
        for peer_id, entry in entries.items():
            peer = _peer_from_json(peer_id, entry)
            if peer is None:
                skipped += 1
            else:
                self._peers[peer_id] = peer
        if skipped:
            log.warning("peer cache %s: skipped %d malformed entries", self.path, skipped)
            self._dirty = True
        if self._prune(time.time()):
            self._dirty = True

    def peers(self, farm_id: str | None = None) -> list[KnownPeer]:
        """Known peers (of ``farm_id`` if given), most recently seen first."""
        cutoff = time.time() - self.max_age_s
        found = [p for p in self._peers.values()
                 if p.last_seen >= cutoff and (farm_id is None or p.farm_id == farm_id)]
        return sorted(found, key=lambda p: (-p.last_seen, p.peer_id))

    def get(self, peer_id: str) -> KnownPeer | None:
        return self._peers.get(peer_id)

    # --- changing -----------------------------------------------------------------------

    def remember(self, peer_id: str, url: str, farm_id: str, *, seen_at: float | None = None) -> None:
        """Record that ``peer_id`` of ``farm_id`` answered at ``url`` (now, unless ``seen_at``).

        A URL that is not ``http://host:port`` is ignored with a warning.
        """
        try:
            url = parse_seed(url)
        except SeedError as exc:
            log.warning("peer cache: not remembering peer %s: %s", peer_id, exc)
            return
        seen = time.time() if seen_at is None else seen_at
        old = self._peers.get(peer_id)
        if old is not None and old.last_seen > seen:
            seen = old.last_seen
        peer = KnownPeer(peer_id=peer_id, url=url, farm_id=farm_id, last_seen=seen)
        if old != peer:
            self._peers[peer_id] = peer
            self._dirty = True
            self._prune(time.time())

    def forget(self, peer_id: str) -> None:
        if self._peers.pop(peer_id, None) is not None:
            self._dirty = True

    def _prune(self, now: float) -> bool:
        """Drop entries older than max_age_s, then the oldest beyond max_entries."""
        keep = sorted((p for p in self._peers.values() if p.last_seen >= now - self.max_age_s),
                      key=lambda p: -p.last_seen)[: self.max_entries]
        if len(keep) == len(self._peers):
            return False
        self._peers = {p.peer_id: p for p in keep}
        return True

    # --- writing ------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """True when there are changes that :meth:`save` has not written yet."""
        return self._dirty

    def save(self, *, force: bool = False) -> bool:
        """Write the file atomically if anything changed. Returns False (and logs why) on failure.

        A failed save never raises: the cache is a convenience, and a full disk
        must not stop a peer from working.
        """
        if not (self._dirty or force):
            return True
        document = {
            "version": _FORMAT_VERSION,
            "peers": {p.peer_id: {"url": p.url, "farm_id": p.farm_id, "last_seen": p.last_seen}
                      for p in self.peers()},
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write the peer cache %s (%s); known peers are kept in memory only. "
                        "Check the data dir's free space and permissions.", self.path, exc.strerror or exc)
            try:
                tmp.unlink()
            except OSError:
                pass
            return False
        self._dirty = False
        return True


def _peer_from_json(peer_id: object, entry: object) -> KnownPeer | None:
    if not isinstance(peer_id, str) or not peer_id or not isinstance(entry, dict):
        return None
    url, farm_id, last_seen = entry.get("url"), entry.get("farm_id"), entry.get("last_seen")
    if not isinstance(url, str) or not isinstance(farm_id, str) or not farm_id:
        return None
    if not isinstance(last_seen, (int, float)) or isinstance(last_seen, bool) or not math.isfinite(last_seen):
        return None
    try:
        url = parse_seed(url)
    except SeedError:
        return None
    return KnownPeer(peer_id=peer_id, url=url, farm_id=farm_id, last_seen=float(last_seen))


def bootstrap_urls(seeds: Iterable[str], cache: PeerCache | None, farm_id: str, *,
                   own_url: str | None = None) -> list[str]:
    """URLs to call at start-up: the seeds (already parsed) first, then cached peers of the farm, newest first."""
    urls: list[str] = []
    candidates = list(seeds) + ([p.url for p in cache.peers(farm_id)] if cache is not None else [])
    for url in candidates:
        if url != own_url and url not in urls:
            urls.append(url)
    return urls

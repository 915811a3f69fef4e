"""Finding the other peers of a farm on the local network with mDNS / DNS-SD.

Every peer advertises one service instance, ``<peer_id>._flamenco-peer._tcp.local.``,
whose SRV record points at the peer's HTTP API and whose TXT record says:

- ``txtvers``: format of this TXT record, ``1``
- ``id``: peer id (the same as the instance name)
- ``farm``: farm id; peers of other farms are ignored
- ``name``: human-readable peer name (cut to fit one TXT entry if needed)
- ``ver``: Flamenco Peer version
- ``port``: HTTP API port, the same as the SRV port (which is what gets dialled)
- ``role``: a lowercase token such as ``coordinator`` or ``follower``
- ``epoch``: the coordinator epoch this peer last saw (a whole number >= 0)

It browses for the same service type and keeps :meth:`Discovery.peers`: the
other peers of the *same farm* with a well-formed advert. Adverts of other
farms, of this peer itself, and malformed ones (missing keys, bad numbers,
bad UTF-8) are ignored with a debug log line; they never raise.

What discovery does **not** do: decide who is alive. After a SIGKILL or a
pulled cable no goodbye is sent, and browsers keep the records for their TTL
(the PTR record for more than 18 minutes), so a vanished peer stays in
:meth:`peers` for a long time. Liveness comes from the HTTP heartbeats of
``peer.cluster``; discovery only tells whom to heartbeat. Networks that drop
multicast are covered by seed addresses and the cache of last-known peers
(:mod:`peer.cluster.peer_cache`).

Interfaces: mDNS is only ever sent on the interfaces passed in, which
:func:`interfaces_for_bind` derives from the address the HTTP API listens on.
A peer bound to 127.0.0.1 stays on loopback, one bound to a LAN address stays
on that LAN, and only ``0.0.0.0`` means every IPv4 interface. Questions are
always QM (answers by multicast): several peers on one machine share UDP port
5353 through ``SO_REUSEPORT``, and a unicast (QU) answer would reach only one
of them, often the wrong one (measured: ~1.1 s to discover with QU on loopback,
~0.2 s with QM).

Timing (measured, see runtime-facts.md): :meth:`Discovery.start` takes ~1.2 s
because mDNS probes the name three times before claiming it; peers then find
each other within ~0.2 s. :meth:`Discovery.stop` sends goodbyes (~0.25 s) and
other peers see the removal at once.

Usage (inside the peer's event loop)::

    discovery = Discovery(farm_id=..., peer_id=..., name=..., port=api_port,
                          interfaces=interfaces_for_bind(config.host), version=__version__,
                          on_change=lambda peer_id, advert: ...)  # advert None: withdrawn
    await discovery.start()
    await discovery.update(role="coordinator", epoch=7)
    await discovery.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_flamenco-peer._tcp.local."
TXT_VERSION = "1"
# A role is a short lowercase token; the election decides which ones exist
# ("coordinator", "follower", "electing", ...). Discovery only carries it.
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
RESOLVE_TIMEOUT_MS = 3000
# DNS-SD limits: one label of the instance name, one "key=value" TXT entry.
_MAX_LABEL_BYTES = 63
_MAX_TXT_ENTRY_BYTES = 255
_PEER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ANY_ADDRESSES = {"", "0.0.0.0", "::", "*"}

OnChange = Callable[[str, "PeerAdvert | None"], None]


class DiscoveryError(Exception):
    """Discovery cannot run as configured; the message names the cause and the fix."""


class AdvertError(ValueError):
    """An advert that cannot be used (malformed TXT, no address); ignored by browsers."""


@dataclass(frozen=True)
class PeerAdvert:
    """What another peer says about itself over mDNS."""

    peer_id: str
    farm_id: str
    name: str
    version: str
    host: str  # the address to dial, preferably on a network this peer is on
    port: int
    role: str
    epoch: int
    addresses: tuple[str, ...] = field(default=())  # every IPv4 address it advertised

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def interfaces_for_bind(host: str) -> list[str]:
    """The IPv4 addresses to run mDNS on, given the address the HTTP API binds to.

    - ``127.0.0.1``, ``localhost`` or any 127.x address: that loopback address
      only, so a peer that only listens locally never multicasts on a network.
    - a specific IPv4 address: exactly that address (it must belong to this
      machine; zeroconf fails at start otherwise).
    - ``0.0.0.0``, ``::``, ``*`` or empty: every IPv4 address of every
      non-loopback interface (what the API is reachable on), in adapter order.
      A machine with no such address gets ``["127.0.0.1"]``: alone, it can
      still find peers on the same machine.

    The same list is what a peer should advertise as its addresses. Host names
    and other IPv6 addresses raise :class:`DiscoveryError` (discovery is IPv4).
    """
    text = host.strip()
    if text in _ANY_ADDRESSES:
        found = _non_loopback_ipv4_addresses()
        return found or ["127.0.0.1"]
    if text.lower() == "localhost":
        return ["127.0.0.1"]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise DiscoveryError(
            f"cannot choose mDNS interfaces for the bind address {host!r}: it is not an IP address. "
            "Set `host` to 127.0.0.1 (this machine only), one of this machine's IPv4 addresses, or 0.0.0.0 (all)."
        ) from None
    if address.version != 4:
        raise DiscoveryError(
            f"peer discovery works over IPv4, but the API binds to the IPv6 address {host!r}. "
            "Set `host` to 127.0.0.1, an IPv4 address of this machine, or 0.0.0.0 (all)."
        )
    return [str(address)]


def _non_loopback_ipv4_addresses() -> list[str]:
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback and ip.ip not in found:
                found.append(ip.ip)
    return found


def _local_networks(addresses: list[str]) -> list[ipaddress.IPv4Network]:
    """The networks (with prefix length) that our mDNS addresses sit on."""
    networks: list[ipaddress.IPv4Network] = []
    wanted = set(addresses)
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip in wanted:
                networks.append(ipaddress.IPv4Network(f"{ip.ip}/{ip.network_prefix}", strict=False))
    return networks


def instance_name(peer_id: str) -> str:
    return f"{peer_id}.{SERVICE_TYPE}"


def _server_name(peer_id: str) -> str:
    # Our own host label, so that a peer id equal to a machine's host name can
    # never answer for that machine's real "<host>.local." record.
    label = f"fp-{peer_id}"
    if len(label) > _MAX_LABEL_BYTES:
        label = "fp-" + hashlib.sha256(peer_id.encode()).hexdigest()[:32]
    return f"{label}.local."


def check_peer_id(peer_id: str) -> str:
    if not isinstance(peer_id, str) or not _PEER_ID_RE.match(peer_id) or len(peer_id) > _MAX_LABEL_BYTES:
        raise DiscoveryError(
            f"peer id {peer_id!r} cannot be advertised over mDNS: it must be 1-{_MAX_LABEL_BYTES} letters, digits, "
            "'-' or '_' (the default, a UUID, is fine). Fix `peer_id` in config.toml, or delete the line "
            "to get a new one."
        )
    return peer_id


def _fit_txt_value(key: str, value: str) -> str:
    """Cut ``value`` so that ``key=value`` fits one TXT entry, without splitting a UTF-8 character."""
    room = _MAX_TXT_ENTRY_BYTES - len(key) - 1
    encoded = value.encode("utf-8")
    if len(encoded) <= room:
        return value
    return encoded[:room].decode("utf-8", errors="ignore")


def build_txt(*, peer_id: str, farm_id: str, name: str, version: str, port: int, role: str,
              epoch: int) -> dict[str, str]:
    values = {
        "txtvers": TXT_VERSION, "id": peer_id, "farm": farm_id, "name": name, "ver": version,
        "port": str(port), "role": role, "epoch": str(epoch),
    }
    return {key: _fit_txt_value(key, value) for key, value in values.items()}


def parse_advert(properties: Mapping[bytes, bytes | None], addresses: list[str],
                 local_networks: list[ipaddress.IPv4Network] | None = None,
                 srv_port: int | None = None) -> PeerAdvert:
    """Turn a resolved service's TXT properties, IPv4 addresses and SRV port into a :class:`PeerAdvert`.

    The SRV port, when given, is the one dialled (DNS-SD's rule); the TXT ``port``
    must still be well-formed.

    Raises :class:`AdvertError` saying what is wrong; callers log it and move on.
    """
    text: dict[str, str] = {}
    for raw_key, raw_value in properties.items():
        try:
            key = raw_key.decode("ascii").lower()
            text[key] = "" if raw_value is None else raw_value.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            raise AdvertError(f"TXT entry {raw_key!r} is not valid text") from None
    missing = [k for k in ("id", "farm", "ver", "port", "role", "epoch") if not text.get(k)]
    if missing:
        raise AdvertError(f"TXT record lacks {', '.join(missing)}")
    peer_id = text["id"]
    if not _PEER_ID_RE.match(peer_id) or len(peer_id) > _MAX_LABEL_BYTES:
        raise AdvertError(f"TXT id {peer_id!r} is not a peer id")
    port = _parse_int(text, "port")
    if not 0 < port < 65536:
        raise AdvertError(f"TXT port {port} is outside 1-65535")
    epoch = _parse_int(text, "epoch")
    if epoch < 0:
        raise AdvertError(f"TXT epoch {epoch} is negative")
    role = text["role"]
    if not _ROLE_RE.match(role):
        raise AdvertError(f"TXT role {role!r} is not a lowercase word")
    usable = [a for a in addresses if _is_usable_ipv4(a)]
    if not usable:
        raise AdvertError(f"no usable IPv4 address in {addresses!r}")
    return PeerAdvert(
        peer_id=peer_id, farm_id=text["farm"], name=text.get("name") or peer_id, version=text["ver"],
        host=_pick_host(usable, local_networks or []), port=srv_port if srv_port else port, role=role, epoch=epoch,
        addresses=tuple(usable),
    )


def _parse_int(text: dict[str, str], key: str) -> int:
    value = text[key]
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise AdvertError(f"TXT {key} {value!r} is not a whole number")
    return int(value)


def _is_usable_ipv4(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return not (ip.is_unspecified or ip.is_multicast)


def _pick_host(addresses: list[str], local_networks: list[ipaddress.IPv4Network]) -> str:
    """Prefer an address on one of our own networks: a peer on two LANs is only reachable on the shared one."""
    for address in addresses:
        ip = ipaddress.IPv4Address(address)
        if any(ip in network for network in local_networks):
            return address
    return addresses[0]


class Discovery:
    """Advertise this peer and track the other peers of its farm. See the module docstring.

    ``on_change(peer_id, advert)`` is called in the event loop when a peer of the
    farm appears or changes its advert, and with ``None`` when it withdraws
    (or stops being a valid peer of this farm). Exceptions it raises are logged.
    """

    def __init__(self, *, farm_id: str, peer_id: str, name: str, port: int, interfaces: list[str],
                 version: str, addresses: list[str] | None = None, role: str = "peer", epoch: int = 0,
                 on_change: OnChange | None = None) -> None:
        self.peer_id = check_peer_id(peer_id)
        if not farm_id:
            raise DiscoveryError("cannot advertise a peer without a farm id; the farm identity is missing")
        if not 0 < port < 65536:
            raise DiscoveryError(f"cannot advertise API port {port}: start the HTTP API first and pass the port "
                                 "it actually listens on (1-65535)")
        if not interfaces:
            raise DiscoveryError("no interfaces to run mDNS on; use interfaces_for_bind(host) to choose them")
        for address in [*interfaces, *(addresses or [])]:
            if not _is_usable_ipv4(address):
                raise DiscoveryError(f"{address!r} is not an IPv4 address of this machine; use "
                                     "interfaces_for_bind(host) to choose the interfaces")
        _check_role_epoch(role, epoch)
        self.farm_id = farm_id
        self.name = name or peer_id
        self.port = port
        self.interfaces = list(interfaces)
        self.addresses = list(addresses) if addresses else list(interfaces)
        self.version = version
        self.role = role
        self.epoch = epoch
        self.on_change = on_change
        self.service_name = instance_name(peer_id)
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registered = False
        self._stopped = False
        self._local_networks: list[ipaddress.IPv4Network] = []
        self._peers: dict[str, PeerAdvert] = {}
        self._name_of_peer: dict[str, str] = {}  # peer_id -> service name it advertised under
        self._resolving: dict[str, asyncio.Task[None]] = {}  # service name -> its latest resolve
        self._announcements: set[asyncio.Task[object]] = set()

    # --- public -------------------------------------------------------------------------

    def peers(self) -> dict[str, PeerAdvert]:
        """Other peers of this farm with a valid advert, by peer id (a copy)."""
        return dict(self._peers)

    async def start(self) -> None:
        """Start browsing, then claim our name and announce (~1.2 s of mDNS probing)."""
        if self._azc is not None or self._stopped:
            raise DiscoveryError("a Discovery can be started only once; create a new one to advertise again")
        self._local_networks = _local_networks(self.interfaces)
        try:
            self._azc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        except OSError as exc:
            self._stopped = True
            raise DiscoveryError(
                f"cannot start mDNS on {', '.join(self.interfaces)}: {exc.strerror or exc}. "
                "Check that the API's bind address (`host`) is an address of this machine."
            ) from exc
        try:
            # Browse first: peers already on the network are found while we probe.
            self._browser = AsyncServiceBrowser(
                self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_service_state_change],
                question_type=DNSQuestionType.QM,
            )
            self._info = self._build_info()
            announce = await self._azc.async_register_service(self._info)
            self._registered = True
            self._track(announce)
        except NonUniqueNameException:
            await self.stop()
            raise DiscoveryError(
                f"another peer on this network already advertises peer id {self.peer_id!r}; two peers share a "
                "data dir or a copied config.toml. Give this one its own data dir, or delete the `peer_id` "
                "line from its config.toml to get a new id."
            ) from None
        except (OSError, BadTypeInNameException) as exc:
            await self.stop()
            raise DiscoveryError(f"cannot advertise this peer over mDNS: {exc}") from exc
        except BaseException:
            await self.stop()
            raise
        log.info("mDNS: advertising %s on %s (port %d, farm %s)", self.peer_id, ", ".join(self.interfaces),
                 self.port, self.farm_id)

    async def update(self, *, role: str, epoch: int) -> None:
        """Re-announce a new role or epoch; other peers get ``on_change`` with the new advert."""
        _check_role_epoch(role, epoch)
        if (role, epoch) == (self.role, self.epoch):
            return
        self.role, self.epoch = role, epoch
        if self._azc is None or not self._registered or self._stopped:
            return  # start() will advertise the new values
        self._info = self._build_info()
        self._track(await self._azc.async_update_service(self._info))

    async def stop(self) -> None:
        """Withdraw the advert (goodbye packets, ~0.25 s), stop browsing, close sockets. Idempotent."""
        if self._stopped and self._azc is None:
            return
        self._stopped = True
        azc, self._azc = self._azc, None
        tasks = [*self._resolving.values(), *self._announcements]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._resolving.clear()
        self._announcements.clear()
        if azc is None:
            return
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        if self._registered and self._info is not None:
            self._registered = False
            try:
                goodbye = await azc.async_unregister_service(self._info)
                await goodbye
            except Exception as exc:  # a vanished interface must not stop the shutdown
                log.warning("mDNS: could not send goodbye for %s: %s", self.peer_id, exc)
        try:
            await azc.async_close()
        except Exception as exc:
            log.warning("mDNS: closing zeroconf failed: %s", exc)
        self._peers.clear()
        self._name_of_peer.clear()

    # --- advertising ----------------------------------------------------------------------

    def _build_info(self) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE, self.service_name, port=self.port,
            properties=build_txt(peer_id=self.peer_id, farm_id=self.farm_id, name=self.name,
                                 version=self.version, port=self.port, role=self.role, epoch=self.epoch),
            server=_server_name(self.peer_id), parsed_addresses=self.addresses,
        )

    def _track(self, awaitable: object) -> None:
        if isinstance(awaitable, asyncio.Future):
            self._announcements.add(awaitable)
            awaitable.add_done_callback(self._announcements.discard)

    # --- browsing -------------------------------------------------------------------------

    def _on_service_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                                 state_change: ServiceStateChange) -> None:
        if self._stopped or name.lower() == self.service_name.lower():
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()  # the newest event wins; its resolve reads the freshest cache
        if state_change is ServiceStateChange.Removed:
            self._forget_name(name, "withdrew its advert")
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task
        task.add_done_callback(lambda t, n=name: self._resolve_done(n, t))

    def _resolve_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]
        if not task.cancelled() and task.exception() is not None:
            log.debug("mDNS: resolving %s failed", name, exc_info=task.exception())

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM):
            log.debug("mDNS: %s did not answer within %d ms; ignoring it for now", name, RESOLVE_TIMEOUT_MS)
            return
        try:
            advert = parse_advert(info.properties, info.parsed_addresses(IPVersion.V4Only), self._local_networks,
                                  srv_port=info.port)
        except AdvertError as exc:
            log.debug("mDNS: ignoring %s: %s", name, exc)
            self._forget_name(name, "no longer has a valid advert")
            return
        if advert.farm_id != self.farm_id:
            log.debug("mDNS: ignoring %s (%s): it belongs to farm %s, not %s", advert.peer_id, name,
                      advert.farm_id, self.farm_id)
            self._forget_name(name, "moved to another farm")
            return
        if advert.peer_id == self.peer_id:
            log.warning("mDNS: %s advertises this peer's own id %s; two peers may share a config.toml",
                        name, self.peer_id)
            return
        self._remember(name, advert)

    def _remember(self, name: str, advert: PeerAdvert) -> None:
        old_name = self._name_of_peer.get(advert.peer_id)
        if old_name is not None and old_name != name:
            log.debug("mDNS: peer %s now advertises as %s (was %s)", advert.peer_id, name, old_name)
        for other_id, other_name in list(self._name_of_peer.items()):
            if other_name == name and other_id != advert.peer_id:
                self._forget_peer(other_id, f"{name} now carries peer id {advert.peer_id}")
        self._name_of_peer[advert.peer_id] = name
        if self._peers.get(advert.peer_id) == advert:
            return
        is_new = advert.peer_id not in self._peers
        self._peers[advert.peer_id] = advert
        log.debug("mDNS: %s peer %s (%s) at %s, role %s, epoch %d", "found" if is_new else "updated",
                  advert.peer_id, advert.name, advert.url, advert.role, advert.epoch)
        self._notify(advert.peer_id, advert)

    def _forget_name(self, name: str, why: str) -> None:
        for peer_id, known_name in list(self._name_of_peer.items()):
            if known_name == name:
                self._forget_peer(peer_id, why)

    def _forget_peer(self, peer_id: str, why: str) -> None:
        self._name_of_peer.pop(peer_id, None)
        if self._peers.pop(peer_id, None) is not None:
            log.debug("mDNS: peer %s %s", peer_id, why)
            self._notify(peer_id, None)

    def _notify(self, peer_id: str, advert: PeerAdvert | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(peer_id, advert)
        except Exception:
            log.exception("mDNS: the on_change callback failed for peer %s", peer_id)


def _check_role_epoch(role: str, epoch: int) -> None:
    if not isinstance(role, str) or not _ROLE_RE.match(role):
        raise DiscoveryError(f"role {role!r} must be a short lowercase word such as 'coordinator' or 'follower'")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise DiscoveryError(f"epoch must be a whole number >= 0, got {epoch!r}")

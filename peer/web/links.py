"""The dashboard's address, as ``flamenco-peer run`` and ``status`` print it."""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

_WILDCARDS = ("", "0.0.0.0", "::", "*")
_LOOPBACK_V4 = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class DashboardLinks:
    local: str | None     # for a browser on this computer: needs no join code
    network: str | None   # for other computers: they enter the farm's join code once

    def lines(self) -> list[str]:
        out = []
        if self.local:
            out.append(f"dashboard: {self.local} (on this computer)")
        if self.network:
            out.append(f"dashboard from other computers: {self.network} (asks for the join code once)")
        return out


def dashboard_links(bind_host: str, port: int, peer_url: str) -> DashboardLinks:
    """Links to a peer's dashboard, from where it listens (``bind_host``, ``port``) and the
    address it tells the farm (``peer_url``)."""
    host = bind_host.strip("[]").lower()
    network = str(URL(peer_url).with_path("/")) if peer_url else None
    if host in _LOOPBACK_V4 or host.startswith("127."):
        return DashboardLinks(local=f"http://127.0.0.1:{port}/", network=None)
    if host == "::1":
        return DashboardLinks(local=f"http://[::1]:{port}/", network=None)
    if host in _WILDCARDS:
        local = f"http://[::1]:{port}/" if host == "::" else f"http://127.0.0.1:{port}/"
        return DashboardLinks(local=local, network=network if network != local else None)
    # Bound to one network address only: this computer's browser comes in through it too,
    # which is not loopback, so it asks for the join code like any other computer.
    return DashboardLinks(local=None, network=network)


def dashboard_link(peer_url: str) -> str:
    """The dashboard of the peer at ``peer_url`` (what ``flamenco-peer status`` prints)."""
    return str(URL(peer_url).with_path("/").with_query(None).with_fragment(None))

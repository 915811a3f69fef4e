"""The dashboard links ``flamenco-peer run`` and ``status`` print."""

from __future__ import annotations

import pytest

from peer.web.links import DashboardLinks, dashboard_link, dashboard_links


@pytest.mark.parametrize("host, url, expected", [
    ("127.0.0.1", "http://127.0.0.1:8780", DashboardLinks("http://127.0.0.1:8780/", None)),
    ("localhost", "http://localhost:8780", DashboardLinks("http://127.0.0.1:8780/", None)),
    ("::1", "http://[::1]:8780", DashboardLinks("http://[::1]:8780/", None)),
    ("0.0.0.0", "http://192.168.1.5:8780", DashboardLinks("http://127.0.0.1:8780/", "http://192.168.1.5:8780/")),
    ("::", "http://[fd00::5]:8780", DashboardLinks("http://[::1]:8780/", "http://[fd00::5]:8780/")),
    ("192.168.1.5", "http://192.168.1.5:8780", DashboardLinks(None, "http://192.168.1.5:8780/")),
])
def test_links_follow_where_the_peer_listens(host: str, url: str, expected: DashboardLinks) -> None:
    assert dashboard_links(host, 8780, url) == expected


def test_printed_lines_say_who_needs_the_join_code() -> None:
    lines = dashboard_links("0.0.0.0", 8780, "http://192.168.1.5:8780").lines()
    assert lines == [
        "dashboard: http://127.0.0.1:8780/ (on this computer)",
        "dashboard from other computers: http://192.168.1.5:8780/ (asks for the join code once)",
    ]
    assert dashboard_links("192.168.1.5", 8780, "http://192.168.1.5:8780").lines() == [
        "dashboard from other computers: http://192.168.1.5:8780/ (asks for the join code once)"]


def test_link_of_a_peer_url() -> None:
    assert dashboard_link("http://127.0.0.1:8780") == "http://127.0.0.1:8780/"
    assert dashboard_link("http://10.0.0.2:8780/api/v3?x=1") == "http://10.0.0.2:8780/"

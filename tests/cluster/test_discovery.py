"""mDNS discovery with real zeroconf: on loopback, and across network namespaces.

Never on the host's real interfaces: loopback tests bind to 127.0.0.1, the
multi-host test runs each peer in its own namespace of a NetnsLab.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from peer.cluster import discovery as discovery_module
from peer.cluster.discovery import (
    SERVICE_TYPE,
    AdvertError,
    Discovery,
    DiscoveryError,
    PeerAdvert,
    build_txt,
    instance_name,
    interfaces_for_bind,
    parse_advert,
)
from peer.cluster.peer_cache import (
    KnownPeer,
    PeerCache,
    SeedError,
    bootstrap_urls,
    parse_seed,
    parse_seeds,
)
from tests.netns import NetnsLab, requires_netns

pytestmark = pytest.mark.timeout(30)

LOOPBACK = ["127.0.0.1"]
REPO_ROOT = Path(__file__).resolve().parents[2]
FARM = "farm-a"


def _txt(**overrides: str | None) -> dict[bytes, bytes | None]:
    values: dict[str, str | None] = dict(build_txt(peer_id="p1", farm_id=FARM, name="Peer One", version="0.1.0",
                                                    port=8780, role="follower", epoch=4))
    values.update(overrides)
    return {k.encode(): (None if v is None else v.encode()) for k, v in values.items()}


class Events:
    """Records on_change calls and lets a test wait for a condition on them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, PeerAdvert | None]] = []

    def __call__(self, peer_id: str, advert: PeerAdvert | None) -> None:
        self.calls.append((peer_id, advert))


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Any:
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"


@pytest.fixture
async def make_peer() -> AsyncIterator[Callable[..., Discovery]]:
    made: list[Discovery] = []

    def make(peer_id: str, *, farm_id: str = FARM, port: int = 9000, **kw: Any) -> Discovery:
        kw.setdefault("interfaces", LOOPBACK)
        kw.setdefault("version", "0.1.0")
        kw.setdefault("name", f"name of {peer_id}")
        peer = Discovery(farm_id=farm_id, peer_id=peer_id, port=port, **kw)
        made.append(peer)
        return peer

    yield make
    await asyncio.gather(*(peer.stop() for peer in made))


# --- pure parts ---------------------------------------------------------------------------


def test_parse_advert_reads_every_field() -> None:
    advert = parse_advert(_txt(), ["127.0.0.1"])
    assert advert == PeerAdvert(peer_id="p1", farm_id=FARM, name="Peer One", version="0.1.0", host="127.0.0.1",
                                port=8780, role="follower", epoch=4, addresses=("127.0.0.1",))
    assert advert.url == "http://127.0.0.1:8780"
    assert parse_advert(_txt(), ["127.0.0.1"], srv_port=9000).port == 9000  # SRV is what gets dialled


@pytest.mark.parametrize("properties, addresses, why", [
    (_txt(farm=None), ["10.0.0.1"], "lacks farm"),
    (_txt(id=None), ["10.0.0.1"], "lacks id"),
    (_txt(port="80x"), ["10.0.0.1"], "not a whole number"),
    (_txt(port="0"), ["10.0.0.1"], "outside 1-65535"),
    (_txt(port="70000"), ["10.0.0.1"], "outside 1-65535"),
    (_txt(epoch="-1"), ["10.0.0.1"], "not a whole number"),
    (_txt(epoch="٣"), ["10.0.0.1"], "not a whole number"),  # a non-ASCII digit
    (_txt(role="Coordinator!"), ["10.0.0.1"], "not a lowercase word"),
    (_txt(id="has space"), ["10.0.0.1"], "not a peer id"),
    ({**_txt(), b"name": b"\xff\xfe"}, ["10.0.0.1"], "not valid text"),
    (_txt(), [], "no usable IPv4 address"),
    (_txt(), ["0.0.0.0", "224.0.0.251"], "no usable IPv4 address"),
])
def test_parse_advert_rejects_malformed(properties: dict[bytes, bytes | None], addresses: list[str],
                                        why: str) -> None:
    with pytest.raises(AdvertError, match=why):
        parse_advert(properties, addresses)


def test_parse_advert_prefers_an_address_on_our_network() -> None:
    import ipaddress
    advert = parse_advert(_txt(), ["172.16.0.9", "10.1.2.3"], [ipaddress.IPv4Network("10.1.2.0/24")])
    assert advert.host == "10.1.2.3"
    assert advert.addresses == ("172.16.0.9", "10.1.2.3")
    assert parse_advert(_txt(), ["172.16.0.9", "10.1.2.3"]).host == "172.16.0.9"


def test_long_names_are_cut_to_fit_one_txt_entry() -> None:
    txt = build_txt(peer_id="p", farm_id=FARM, name="é" * 300, version="1", port=1, role="peer", epoch=0)
    entry = b"name=" + txt["name"].encode("utf-8")
    assert len(entry) <= 255
    assert txt["name"] == "é" * 125  # whole characters only


def test_interfaces_for_bind() -> None:
    assert interfaces_for_bind("127.0.0.1") == ["127.0.0.1"]
    assert interfaces_for_bind("localhost") == ["127.0.0.1"]
    assert interfaces_for_bind("127.0.0.5") == ["127.0.0.5"]
    assert interfaces_for_bind(" 10.1.2.3 ") == ["10.1.2.3"]
    everything = interfaces_for_bind("0.0.0.0")
    assert everything == interfaces_for_bind("::") == interfaces_for_bind("")
    expected = discovery_module._non_loopback_ipv4_addresses() or ["127.0.0.1"]
    assert everything == expected
    assert "127.0.0.1" not in everything or everything == ["127.0.0.1"]
    with pytest.raises(DiscoveryError, match="not an IP address"):
        interfaces_for_bind("studio-pc")
    with pytest.raises(DiscoveryError, match="IPv4"):
        interfaces_for_bind("::1")


@pytest.mark.parametrize("kwargs, why", [
    ({"peer_id": "has.dot"}, "cannot be advertised"),
    ({"peer_id": "x" * 64}, "cannot be advertised"),
    ({"peer_id": ""}, "cannot be advertised"),
    ({"farm_id": ""}, "farm id"),
    ({"port": 0}, "API port 0"),
    ({"interfaces": []}, "interfaces_for_bind"),
    ({"interfaces": ["0.0.0.0"]}, "not an IPv4 address of this machine"),
    ({"interfaces": ["fe80::1"]}, "not an IPv4 address of this machine"),
    ({"role": "Boss"}, "lowercase word"),
    ({"epoch": -1}, "epoch"),
])
def test_bad_settings_are_refused_with_a_reason(kwargs: dict[str, Any], why: str) -> None:
    settings: dict[str, Any] = dict(farm_id=FARM, peer_id="p0", name="n", port=9000, interfaces=LOOPBACK,
                                    version="0.1.0")
    settings.update(kwargs)
    with pytest.raises(DiscoveryError, match=why):
        Discovery(**settings)


async def test_start_on_an_address_this_machine_does_not_have() -> None:
    # 203.0.113.0/24 is TEST-NET-3: never assigned to a real machine.
    peer = Discovery(farm_id=FARM, peer_id="p0", name="n", port=9000, interfaces=["203.0.113.77"], version="1")
    with pytest.raises(DiscoveryError, match="cannot start mDNS on 203.0.113.77"):
        await peer.start()
    await peer.stop()
    await peer.stop()


# --- real mDNS on loopback ---------------------------------------------------------------


async def test_peers_of_a_farm_find_each_other_and_ignore_other_farms(
        make_peer: Callable[..., Discovery], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peer.cluster.discovery")
    events = {i: Events() for i in range(3)}
    peers = [make_peer(f"peer{i}", port=9100 + i, on_change=events[i], role="follower", epoch=2)
             for i in range(3)]
    stranger = make_peer("stranger", farm_id="farm-b", port=9199, on_change=Events())
    await asyncio.gather(*(p.start() for p in [*peers, stranger]))

    await wait_for(lambda: all(len(p.peers()) == 2 for p in peers), "three peers to find each other")
    for i, peer in enumerate(peers):
        others = {f"peer{j}" for j in range(3) if j != i}
        assert set(peer.peers()) == others
        for j, advert in ((int(pid[-1]), a) for pid, a in peer.peers().items()):
            assert advert == PeerAdvert(peer_id=f"peer{j}", farm_id=FARM, name=f"name of peer{j}", version="0.1.0",
                                        host="127.0.0.1", port=9100 + j, role="follower", epoch=2,
                                        addresses=("127.0.0.1",))
            assert advert.url == f"http://127.0.0.1:{9100 + j}"
        assert sorted(pid for pid, _ in events[i].calls) == sorted(others)

    # The stranger saw farm-a's adverts and dropped them (and farm-a dropped its advert).
    await wait_for(lambda: "belongs to farm farm-a, not farm-b" in caplog.text, "the stranger to see farm-a")
    await wait_for(lambda: "ignoring stranger (stranger._flamenco-peer._tcp.local.): it belongs to farm farm-b"
                   in caplog.text, "farm-a to see the stranger")
    assert stranger.peers() == {}
    assert stranger.on_change.calls == []  # type: ignore[union-attr]
    assert all("stranger" not in p.peers() for p in peers)


async def test_update_and_stop_propagate(make_peer: Callable[..., Discovery]) -> None:
    watcher_events = Events()
    watcher = make_peer("watcher", port=9200, on_change=watcher_events)
    leader = make_peer("leader", port=9201, name="The Leader")
    await asyncio.gather(watcher.start(), leader.start())
    await wait_for(lambda: "leader" in watcher.peers(), "the watcher to find the leader")
    assert watcher.peers()["leader"].role == "peer" and watcher.peers()["leader"].epoch == 0

    await leader.update(role="coordinator", epoch=7)
    await wait_for(lambda: watcher.peers()["leader"].epoch == 7, "the new epoch to arrive")
    assert watcher.peers()["leader"].role == "coordinator"
    assert watcher_events.calls[-1] == ("leader", watcher.peers()["leader"])
    await leader.update(role="coordinator", epoch=7)  # no change, no announcement
    await leader.update(role="follower", epoch=8)
    await wait_for(lambda: watcher.peers()["leader"].epoch == 8, "the second update to arrive")
    assert [a.epoch for _, a in watcher_events.calls if a is not None] == [0, 7, 8]

    await leader.stop()
    await wait_for(lambda: "leader" not in watcher.peers(), "the leader's goodbye")
    assert watcher_events.calls[-1] == ("leader", None)
    await leader.stop()  # idempotent
    await leader.update(role="coordinator", epoch=9)  # after stop: nothing to announce, no error


async def test_garbage_adverts_are_ignored_and_a_peer_turning_bad_is_dropped(
        make_peer: Callable[..., Discovery], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peer.cluster.discovery")
    events = Events()
    peer = make_peer("peer0", port=9300, on_change=events)
    raw = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)

    def raw_info(instance: str, properties: dict[bytes, bytes | None]) -> AsyncServiceInfo:
        return AsyncServiceInfo(SERVICE_TYPE, instance_name(instance), port=9301, properties=properties,
                                server=f"{instance}.local.", parsed_addresses=["127.0.0.1"])

    garbage = {
        "bad-utf8": {**_txt(id="bad-utf8"), b"farm": b"\xff\xfe"},
        "no-farm": _txt(id="no-farm", farm=None),
        "bad-port": _txt(id="bad-port", port="http"),
        "junk": {b"\x00\x01": b"\x02", b"=": None},
    }
    good = raw_info("raw-good", _txt(id="raw-good"))
    try:
        announcements = await asyncio.gather(peer.start(), raw.async_register_service(good),
                                             *(raw.async_register_service(raw_info(name, props))
                                               for name, props in garbage.items()))
        await asyncio.gather(*announcements[1:])
        await wait_for(lambda: "raw-good" in peer.peers(), "the well-formed raw advert")
        assert peer.peers()["raw-good"].port == 9301
        for name in garbage:
            await wait_for(lambda name=name: f"ignoring {name}._flamenco-peer" in caplog.text,
                           f"the garbage advert {name} to be seen and ignored")
        assert set(peer.peers()) == {"raw-good"}
        assert [pid for pid, _ in events.calls] == ["raw-good"]

        # The good advert turns bad: the peer is dropped, with a removal notification.
        broken = raw_info("raw-good", _txt(id="raw-good", epoch="many"))
        await (await raw.async_update_service(broken))
        await wait_for(lambda: "raw-good" not in peer.peers(), "the broken advert to be dropped")
        assert events.calls[-1] == ("raw-good", None)
    finally:
        await raw.async_close()


async def test_two_peers_with_one_id_are_refused(make_peer: Callable[..., Discovery]) -> None:
    first = make_peer("twin", port=9400)
    await first.start()
    second = make_peer("twin", port=9401)
    with pytest.raises(DiscoveryError, match="already advertises peer id 'twin'"):
        await second.start()


async def test_callback_errors_are_logged_not_raised(make_peer: Callable[..., Discovery],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def explode(peer_id: str, advert: PeerAdvert | None) -> None:
        raise RuntimeError("callback bug")

    a = make_peer("cb-a", port=9500, on_change=explode)
    b = make_peer("cb-b", port=9501)
    await asyncio.gather(a.start(), b.start())
    await wait_for(lambda: "cb-b" in a.peers(), "peer a to find peer b despite its callback failing")
    assert "on_change callback failed for peer cb-b" in caplog.text


# --- real mDNS across network namespaces -------------------------------------------------

NAMESPACE_PEER = r"""
import asyncio, json, sys
from peer.cluster.discovery import Discovery, interfaces_for_bind

peer_id, farm_id, bind, port = sys.argv[1:5]

def emit(**fields):
    print(json.dumps(fields), flush=True)

async def main():
    interfaces = interfaces_for_bind(bind)
    emit(event="starting", interfaces=interfaces)
    discovery = Discovery(
        farm_id=farm_id, peer_id=peer_id, name=peer_id, port=int(port), interfaces=interfaces, version="lab",
        on_change=lambda *_: emit(event="peers", peers={
            pid: {"host": a.host, "port": a.port, "farm": a.farm_id} for pid, a in discovery.peers().items()}))
    await discovery.start()
    emit(event="started")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin
    await discovery.stop()
    emit(event="stopped")

asyncio.run(main())
"""


class NamespacePeer:
    """A Discovery in its own namespace, reporting as JSON lines read by a thread."""

    def __init__(self, lab: NetnsLab, index: int, peer_id: str, farm_id: str, bind: str, port: int) -> None:
        self.peer_id = peer_id
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.peers: dict[str, dict[str, Any]] = {}
        self.interfaces: list[str] | None = None
        self.stopped = False
        self.proc = lab.popen(index, [sys.executable, "-c", NAMESPACE_PEER, peer_id, farm_id, bind, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.strip()
            if text.startswith("{"):
                self.lines.put(json.loads(text))

    def poll(self) -> None:
        while True:
            try:
                event = self.lines.get_nowait()
            except queue.Empty:
                return
            if event["event"] == "starting":
                self.interfaces = event["interfaces"]
            elif event["event"] == "peers":
                self.peers = event["peers"]
            elif event["event"] == "stopped":
                self.stopped = True

    def finish(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def join(self) -> None:
        assert self.proc.wait(timeout=10) == 0
        self._reader.join(timeout=5)
        self.poll()


@requires_netns
async def test_peers_in_separate_namespaces_find_each_other() -> None:
    # Namespaces 0-2: farm-a (peer 2 binds 0.0.0.0, which inside its namespace means its
    # one veth); namespace 3: another farm. The test process joins farm-a on host_ip.
    with NetnsLab(4) as lab:
        binds = [lab.ips[0], lab.ips[1], "0.0.0.0", lab.ips[3]]
        farms = [FARM, FARM, FARM, "farm-b"]
        ns_peers = [NamespacePeer(lab, i, f"ns{i}", farms[i], binds[i], 8780) for i in range(4)]
        host_peer = Discovery(farm_id=FARM, peer_id="host", name="host", port=8781, interfaces=[lab.host_ip],
                              version="lab")
        try:
            await host_peer.start()

            def everyone_found() -> bool:
                for peer in ns_peers:
                    peer.poll()
                    if peer.proc.poll() is not None:
                        pytest.fail(f"{peer.peer_id} exited early with {peer.proc.returncode}")
                return (all(set(p.peers) == {"ns0", "ns1", "ns2", "host"} - {p.peer_id} for p in ns_peers[:3])
                        and set(host_peer.peers()) == {"ns0", "ns1", "ns2"})

            await wait_for(everyone_found, "the namespace peers and the host to find each other", timeout=15)
            assert ns_peers[2].interfaces == [lab.ips[2]]  # 0.0.0.0 -> the veth only, not lo
            for peer in ns_peers[:3]:
                for other_id, seen in peer.peers.items():
                    expected = lab.host_ip if other_id == "host" else lab.ips[int(other_id[2:])]
                    assert seen["host"] == expected and seen["farm"] == FARM
            assert {pid: (a.host, a.port) for pid, a in host_peer.peers().items()} == {
                f"ns{i}": (lab.ips[i], 8780) for i in range(3)}
            ns_peers[3].poll()
            assert ns_peers[3].peers == {}  # farm-b saw nobody of its farm

            # A peer that stops is withdrawn everywhere.
            ns_peers[0].finish()
            await wait_for(lambda: "ns0" not in host_peer.peers(), "ns0's goodbye to reach the host")
            ns_peers[0].join()
            assert ns_peers[0].stopped
            for peer in ns_peers[1:]:
                peer.finish()
            for peer in ns_peers[1:]:
                await asyncio.to_thread(peer.join)
                assert peer.stopped
        finally:
            await host_peer.stop()


# --- seeds and the cache of last-known peers (peer/cluster/peer_cache.py) ----------------


@pytest.mark.parametrize("text, url", [
    ("10.0.0.5:8780", "http://10.0.0.5:8780"),
    (" studio-pc:8780 ", "http://studio-pc:8780"),
    ("Render-01.Lan.:80", "http://render-01.lan:80"),
    ("http://10.0.0.5:8780", "http://10.0.0.5:8780"),
    ("HTTP://10.0.0.5:8780/", "http://10.0.0.5:8780"),
    ("[fd00::5]:8780", "http://[fd00::5]:8780"),
    ("http://[FD00:0::5]:1", "http://[fd00::5]:1"),
    ("localhost:65535", "http://localhost:65535"),
    ("STUDIO_PC:8780", "http://studio_pc:8780"),  # Windows machine names may have underscores
])
def test_parse_seed_accepts(text: str, url: str) -> None:
    assert parse_seed(text) == url


@pytest.mark.parametrize("text, why", [
    ("", "empty seed address"),
    ("studio-pc", "has no port"),
    ("studio-pc:", "has no port"),
    ("studio-pc:0", "no valid port"),
    ("studio-pc:65536", "no valid port"),
    ("studio-pc:80a", "no valid port"),
    ("studio-pc:+80", "no valid port"),
    ("studio-pc:-1", "no valid port"),
    ("https://studio-pc:8780", "uses https://"),
    ("ftp://studio-pc:21", "uses ftp://"),
    ("fd00::5:8780", "brackets"),
    ("studio pc:8780", "contains spaces"),
    ("studio-pc:8780/api", "path or query"),
    ("studio-pc:8780?x=1", "path or query"),
    ("me@studio-pc:8780", "user name"),
    ("-studio-:8780", "neither an IP address nor a host name"),
    ("studio!pc:8780", "neither an IP address nor a host name"),
    ("0.0.0.0:8780", "cannot be dialled"),
    ("http://:8780", "has no host"),
])
def test_parse_seed_refuses_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(SeedError, match=why) as caught:
        parse_seed(text)
    assert "for example" in str(caught.value)  # every message shows how to write it


def test_parse_seeds_drops_duplicates_and_keeps_order() -> None:
    assert parse_seeds(["b:2", "a:1", "http://b:2/", "A:1"]) == ["http://b:2", "http://a:1"]
    with pytest.raises(SeedError, match="'nope'"):
        parse_seeds(["a:1", "nope"])


def test_peer_cache_round_trip(tmp_path: Path) -> None:
    cache = PeerCache.in_data_dir(tmp_path)
    assert cache.peers() == [] and not cache.dirty
    now = time.time()
    cache.remember("p1", "10.0.0.1:8780", FARM, seen_at=now - 60)
    cache.remember("p2", "http://10.0.0.2:8780", FARM, seen_at=now)
    cache.remember("p3", "http://10.0.0.3:8780", "farm-b", seen_at=now)
    assert cache.dirty
    assert cache.save() and not cache.dirty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peers.json"]  # no temporary file left

    reloaded = PeerCache(tmp_path / "peers.json")
    assert [(p.peer_id, p.url) for p in reloaded.peers(FARM)] == [
        ("p2", "http://10.0.0.2:8780"), ("p1", "http://10.0.0.1:8780")]  # newest first
    assert reloaded.get("p3") == KnownPeer("p3", "http://10.0.0.3:8780", "farm-b", now)
    assert len(reloaded.peers()) == 3 and not reloaded.dirty

    reloaded.remember("p1", "http://10.0.0.9:8780", FARM, seen_at=now - 3600)  # older sighting, new URL
    assert reloaded.get("p1") == KnownPeer("p1", "http://10.0.0.9:8780", FARM, now - 60)  # never back in time
    reloaded.forget("p3")
    assert reloaded.save()
    assert set(json.loads((tmp_path / "peers.json").read_text())["peers"]) == {"p1", "p2"}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"peers": []}', "\udcff"])
def test_a_corrupt_cache_starts_empty_with_a_warning(tmp_path: Path, content: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(content.encode("utf-8", errors="surrogateescape"))
    cache = PeerCache(path)
    assert cache.peers() == []
    assert str(path) in caplog.text and "starting with no known peers" in caplog.text
    cache.remember("p1", "10.0.0.1:8780", FARM)
    assert cache.save()
    assert [p.peer_id for p in PeerCache(path).peers()] == ["p1"]


def test_malformed_entries_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    now = time.time()
    path.write_text(json.dumps({"version": 1, "peers": {
        "good": {"url": "http://10.0.0.1:8780", "farm_id": FARM, "last_seen": now},
        "no-url": {"farm_id": FARM, "last_seen": now},
        "bad-url": {"url": "http://10.0.0.1:99999", "farm_id": FARM, "last_seen": now},
        "bad-time": {"url": "http://10.0.0.1:8780", "farm_id": FARM, "last_seen": "yesterday"},
        "not-a-dict": 5,
    }}))
    cache = PeerCache(path)
    assert [p.peer_id for p in cache.peers()] == ["good"]
    assert "skipped 4 malformed entries" in caplog.text and str(path) in caplog.text
    assert cache.dirty  # rewritten clean on the next save


def test_old_and_surplus_entries_are_dropped(tmp_path: Path) -> None:
    now = time.time()
    cache = PeerCache(tmp_path / "peers.json", max_age_s=3600, max_entries=3)
    cache.remember("ancient", "10.0.0.1:1", FARM, seen_at=now - 7200)
    assert cache.peers() == []
    for i in range(5):
        cache.remember(f"p{i}", f"10.0.0.{i + 2}:1", FARM, seen_at=now - 10 * (5 - i))
    assert [p.peer_id for p in cache.peers()] == ["p4", "p3", "p2"]


def test_a_bad_url_is_not_remembered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = PeerCache(tmp_path / "peers.json")
    cache.remember("p1", "not a url", FARM)
    assert cache.peers() == [] and not cache.dirty
    assert "not remembering peer p1" in caplog.text


def test_a_failed_save_is_reported_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    path.mkdir()  # a directory where the file should be: the rename fails
    cache = PeerCache(path)
    assert "cannot be read" in caplog.text
    cache.remember("p1", "10.0.0.1:8780", FARM)
    assert cache.save() is False
    assert f"cannot write the peer cache {path}" in caplog.text
    assert cache.dirty and [p.peer_id for p in cache.peers()] == ["p1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peers.json"]  # the temporary file was removed


def test_bootstrap_urls_seeds_first_then_cached_peers_of_the_farm(tmp_path: Path) -> None:
    cache = PeerCache(tmp_path / "peers.json")
    now = time.time()
    cache.remember("p1", "10.0.0.1:8780", FARM, seen_at=now - 5)
    cache.remember("p2", "10.0.0.2:8780", FARM, seen_at=now)
    cache.remember("me", "10.0.0.9:8780", FARM, seen_at=now)
    cache.remember("other", "10.0.0.3:8780", "farm-b", seen_at=now)
    seeds = parse_seeds(["10.0.0.1:8780", "seed.lan:8780"])
    assert bootstrap_urls(seeds, cache, FARM, own_url="http://10.0.0.9:8780") == [
        "http://10.0.0.1:8780", "http://seed.lan:8780", "http://10.0.0.2:8780"]
    assert bootstrap_urls([], None, FARM) == []

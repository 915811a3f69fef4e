"""Farm identity: the farm file on disk and join codes as people type them."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from peer.cluster import identity as ident
from peer.cluster.identity import (
    FARM_FILE, FarmIdentity, IdentityError, JoinCodeError, join, load, load_or_create, parse_join_code,
)

FIXED = FarmIdentity(name="studio", secret=bytes(range(16)))
MISTYPED = ("join code is mistyped: checksum mismatch — copy it again from "
            "`flamenco-peer farm join-code` on a farm peer")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the identity itself -------------------------------------------------------


def test_farm_id_is_derived_from_the_secret_alone() -> None:
    same_secret = FarmIdentity(name="another name", secret=FIXED.secret)
    other = FarmIdentity(name="studio", secret=bytes(16))
    assert FIXED.farm_id == same_secret.farm_id
    assert FIXED.farm_id != other.farm_id
    assert len(FIXED.farm_id) == 16 and int(FIXED.farm_id, 16) >= 0
    assert FIXED.secret.hex() not in FIXED.farm_id


def test_a_remembered_farm_id_changes_neither_equality_nor_hash() -> None:
    fresh = FarmIdentity(name="studio", secret=bytes(range(16)))
    used = FarmIdentity(name="studio", secret=bytes(range(16)))
    assert used.farm_id == FIXED.farm_id  # computed and kept on `used` only
    assert used == fresh and hash(used) == hash(fresh)
    assert {used: 1}[fresh] == 1


def test_derived_keys_differ_per_purpose_and_repr_hides_the_secret() -> None:
    assert FIXED.derive_key("a") != FIXED.derive_key("b")
    assert FIXED.secret.hex() not in repr(FIXED)
    assert repr(FIXED.secret) not in repr(FIXED)
    assert FIXED.farm_id in repr(FIXED)


@pytest.mark.parametrize("name, fragment", [
    ("", "cannot be empty"), ("   ", "cannot be empty"), ("bad\nname", "control characters"),
    ("x" * 65, "too long"), ("é" * 33, "too long"),
])
def test_bad_farm_names_are_refused_with_the_reason(name: str, fragment: str) -> None:
    with pytest.raises(IdentityError, match=fragment):
        FarmIdentity(name=name, secret=bytes(16))


def test_a_secret_must_have_sixteen_bytes() -> None:
    with pytest.raises(IdentityError, match="16 bytes"):
        FarmIdentity(name="x", secret=b"short")


# --- join codes -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [
    None, "192.168.1.20:8780", "10.0.0.1:1", "[fe80::1]:8780", "[::1]:65535", "render-01.local:8780", "studio:80",
])
def test_join_code_round_trip(seed: str | None) -> None:
    code = FIXED.join_code(seed)
    assert code.startswith("FP1-")
    parsed = parse_join_code(code)
    assert parsed.identity == FIXED
    assert parsed.identity.farm_id == FIXED.farm_id
    assert parsed.seed == seed


def test_join_code_keeps_a_unicode_name() -> None:
    farm = FarmIdentity.generate("Blender Studio — Ünïcødé 🎬")
    assert parse_join_code(farm.join_code()).identity == farm


def test_join_code_tolerates_case_whitespace_dashes_quotes_and_look_alikes() -> None:
    code = FIXED.join_code("192.168.1.20:8780")
    prefix, body = code.split("-", 1)
    variants = [
        code.lower(),
        f"  {code}\n",
        f"'{code}'",
        prefix + "-" + body.replace("-", " "),
        prefix + " " + body.replace("-", ""),
        prefix + "-" + body.replace("-", "\n  "),
        prefix + "-" + body.replace("0", "O").replace("1", "l"),
        prefix + "-" + body.replace("1", "I").lower(),
    ]
    assert "0" in body and "1" in body  # so the look-alike variants really change something
    for variant in variants:
        parsed = parse_join_code(variant)
        assert parsed.identity == FIXED, variant
        assert parsed.seed == "192.168.1.20:8780"


def test_every_single_typo_is_caught() -> None:
    code = FIXED.join_code("192.168.1.20:8780")
    prefix, body = code.split("-", 1)
    chars = body.replace("-", "")
    typos: list[str] = []
    for i, ch in enumerate(chars):
        replacement = "7" if ch != "7" else "8"
        typos.append(chars[:i] + replacement + chars[i + 1:])  # one wrong character
        typos.append(chars[:i] + chars[i + 1:])  # one character left out
        if i + 1 < len(chars) and chars[i] != chars[i + 1]:
            typos.append(chars[:i] + chars[i + 1] + chars[i] + chars[i + 2:])  # two swapped
    typos.append(chars + "7")  # one character too many
    for typo in typos:
        with pytest.raises(JoinCodeError) as info:
            parse_join_code(f"{prefix}-{typo}")
        assert str(info.value).startswith("join code is mistyped"), typo
    assert len(typos) > 100


def test_checksum_mismatch_message_tells_where_to_get_a_good_code() -> None:
    code = FIXED.join_code()
    last = code[-1]
    with pytest.raises(JoinCodeError) as info:
        parse_join_code(code[:-1] + ("A" if last != "A" else "B"))
    assert str(info.value) == MISTYPED


@pytest.mark.parametrize("code, fragment", [
    ("", "empty"),
    ("   ", "empty"),
    ("hello world", "not a Flamenco Peer join code (those start with FP1-)"),
    ("XX1-ABCDE", "not a Flamenco Peer join code"),
    ("FP2-ABCDE-FGHJK", "format FP2, from a newer flamenco-peer"),
    ("FP0-ABCDE-FGHJK", "format FP0, from an older flamenco-peer"),
    ("FP1-ABCDE", "too short"),
    ("FP1-ABCUE-FGHJK", "'U' (character 4 after FP1-) cannot appear"),
    ("FP1-ABC*E-FGHJK", "'*' (character 4 after FP1-) cannot appear"),
])
def test_bad_join_codes_say_what_is_wrong(code: str, fragment: str) -> None:
    with pytest.raises(JoinCodeError) as info:
        parse_join_code(code)
    assert fragment in str(info.value)
    assert "flamenco-peer" in str(info.value)


def _code_from_payload(payload: bytes) -> str:
    """A code with a correct checksum around whatever payload: what a buggy maker would print."""
    data = payload + hashlib.sha256(b"FP1" + payload).digest()[:4]
    return "FP1-" + ident._b32encode(data)


def test_a_well_typed_but_malformed_code_is_called_damaged_not_mistyped() -> None:
    good = bytes(range(16)) + bytes([6]) + b"studio" + bytes([0])
    assert parse_join_code(_code_from_payload(good)).identity == FIXED
    for payload in [
        good + b"extra",  # bytes after the end
        bytes(range(16)) + bytes([9]) + b"studio" + bytes([0]),  # name longer than the code
        bytes(range(16)) + bytes([6]) + b"studio" + bytes([99]),  # unknown seed kind
        bytes(range(16)) + bytes([6]) + b"studio" + bytes([4, 10, 0]),  # IPv4 seed cut short
        bytes(range(16)) + bytes([6]) + b"studio" + bytes([4, 10, 0, 0, 1, 0, 0]),  # port 0
        bytes(range(16)) + bytes([2]) + b"\n\n" + bytes([0]),  # control characters in the name
    ]:
        with pytest.raises(JoinCodeError, match="join code is damaged"):
            parse_join_code(_code_from_payload(payload))


@pytest.mark.parametrize("seed, fragment", [
    ("nohost", "has no port"), ("host:", "has no port"), ("host:0", "no valid port"),
    ("host:70000", "no valid port"), ("fe80::1:8780", "IPv6 address in brackets"), ("[fe80::1]8780", "has no port"),
    ("bad_host!:80", "neither an IP address nor a host name"), ("0.0.0.0:8780", "cannot be dialled"),
])
def test_bad_seed_addresses_are_refused(seed: str, fragment: str) -> None:
    with pytest.raises(IdentityError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        FIXED.join_code(seed)


def test_accepts_join_code_checks_the_secret() -> None:
    assert FIXED.accepts_join_code(FIXED.join_code())
    assert FIXED.accepts_join_code(FIXED.join_code("10.1.2.3:8780").lower())
    assert not FIXED.accepts_join_code(FarmIdentity(name="studio", secret=bytes(16)).join_code())
    assert not FIXED.accepts_join_code("FP1-nonsense")
    assert not FIXED.accepts_join_code("")


# --- the farm file ------------------------------------------------------------------


def test_first_run_creates_a_private_farm_file_and_later_runs_read_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert load(data_dir) is None
    created = load_or_create(data_dir, name="studio")
    path = data_dir / FARM_FILE
    assert _mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc["name"] == "studio" and doc["secret"] == created.secret.hex() and doc["farm_id"] == created.farm_id
    assert load_or_create(data_dir) == created
    assert load_or_create(data_dir, name="ignored for an existing farm") == created
    assert [p.name for p in data_dir.iterdir()] == [FARM_FILE]  # no temporary files left behind


def test_default_name_comes_from_the_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ident.socket, "gethostname", lambda: "render-box.example.org")
    assert load_or_create(tmp_path).name == "render-box farm"
    monkeypatch.setattr(ident.socket, "gethostname", lambda: "h" * 200)
    assert len(ident.default_farm_name().encode()) <= ident.MAX_NAME_BYTES


def test_two_farms_created_apart_have_different_secrets(tmp_path: Path) -> None:
    a = load_or_create(tmp_path / "a", name="same")
    b = load_or_create(tmp_path / "b", name="same")
    assert a.secret != b.secret and a.farm_id != b.farm_id


def test_concurrent_first_runs_agree_on_one_identity(tmp_path: Path) -> None:
    results: list[FarmIdentity] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            results.append(load_or_create(tmp_path))
        except BaseException as exc:  # surfaces in the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(results) == 8 and len({r.secret for r in results}) == 1
    assert load(tmp_path) == results[0]
    assert [p.name for p in tmp_path.iterdir()] == [FARM_FILE]


def test_a_farm_file_readable_by_others_is_made_private(tmp_path: Path) -> None:
    created = load_or_create(tmp_path)
    path = tmp_path / FARM_FILE
    os.chmod(path, 0o644)
    assert load(tmp_path) == created
    assert _mode(path) == 0o600


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"format": 99, "name": "x", "secret": "00" * 16}), "has format 99"),
    (json.dumps({"format": 1, "name": "x"}), "needs string fields"),
    (json.dumps({"format": 1, "name": "x", "secret": "zz"}), "unusable farm identity"),
    (json.dumps({"format": 1, "name": "x", "secret": "00" * 8}), "unusable farm identity"),
    (json.dumps({"format": 1, "name": "", "secret": "00" * 16}), "unusable farm identity"),
    (json.dumps({"format": 1, "name": "x", "secret": "00" * 16, "farm_id": "0123456789abcdef"}), "was edited"),
])
def test_a_broken_farm_file_names_the_file_and_the_fix(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / FARM_FILE
    path.write_text(content)
    with pytest.raises(IdentityError) as info:
        load_or_create(tmp_path)
    message = str(info.value)
    assert fragment in message and str(path) in message
    assert "--join-code" in message or "flamenco-peer version" in message
    assert path.read_text() == content  # a broken file is never overwritten silently


def test_a_farm_file_without_farm_id_still_loads(tmp_path: Path) -> None:
    (tmp_path / FARM_FILE).write_text(json.dumps({"format": 1, "name": "x", "secret": "ab" * 16}))
    assert load(tmp_path) == FarmIdentity(name="x", secret=bytes.fromhex("ab" * 16))


def test_unusable_data_dirs_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / FARM_FILE).mkdir()
    with pytest.raises(IdentityError, match="is a folder"):
        load_or_create(tmp_path)
    a_file = tmp_path / "plain-file"
    a_file.write_text("")
    with pytest.raises(IdentityError, match="cannot (read|write) .*Not a directory.*--data-dir"):
        load_or_create(a_file / "data")
    with pytest.raises(IdentityError, match="cannot (read|write) .*Not a directory.*--data-dir"):
        join(a_file / "data", FIXED.join_code())


# --- joining another farm -------------------------------------------------------------


def test_joining_replaces_the_identity_and_keeps_a_private_backup(tmp_path: Path) -> None:
    own = load_or_create(tmp_path, name="my own")
    old_text = (tmp_path / FARM_FILE).read_text()
    result = join(tmp_path, FIXED.join_code("192.168.1.20:8780"))
    assert result.identity == FIXED and result.seed == "192.168.1.20:8780"
    assert result.changed and result.previous == own
    assert result.backup is not None and result.backup.name.startswith(f"{FARM_FILE}.bak-")
    assert result.backup.read_text() == old_text
    assert _mode(result.backup) == 0o600 and _mode(tmp_path / FARM_FILE) == 0o600
    assert load_or_create(tmp_path) == FIXED

    again = join(tmp_path, FIXED.join_code())
    assert not again.changed and again.backup is None and again.previous == FIXED
    assert len(list(tmp_path.glob(f"{FARM_FILE}.bak-*"))) == 1

    # Going back and forth quickly never overwrites an earlier backup.
    join(tmp_path, own.join_code())
    join(tmp_path, FIXED.join_code())
    backups = sorted(tmp_path.glob(f"{FARM_FILE}.bak-*"))
    assert len(backups) == 3
    assert {load_backup(b) for b in backups} == {own, FIXED}
    assert not list(tmp_path.glob(".*.tmp"))


def load_backup(path: Path) -> FarmIdentity:
    return ident._parse_document(path, path.read_bytes())


def test_joining_on_a_fresh_peer_needs_no_backup(tmp_path: Path) -> None:
    result = join(tmp_path / "new", FIXED.join_code())
    assert result.changed and result.previous is None and result.backup is None and result.seed is None
    assert load(tmp_path / "new") == FIXED


def test_joining_with_a_renamed_farm_updates_the_name(tmp_path: Path) -> None:
    join(tmp_path, FIXED.join_code())
    renamed = FarmIdentity(name="studio (renamed)", secret=FIXED.secret)
    result = join(tmp_path, renamed.join_code())
    assert result.changed and result.backup is not None
    assert load(tmp_path) == renamed and renamed.farm_id == FIXED.farm_id


def test_a_mistyped_code_leaves_the_identity_alone(tmp_path: Path) -> None:
    own = load_or_create(tmp_path)
    code = FIXED.join_code()
    with pytest.raises(JoinCodeError):
        join(tmp_path, code[:-2] + ("ZZ" if code[-2:] != "ZZ" else "YY"))
    assert load(tmp_path) == own
    assert [p.name for p in tmp_path.iterdir()] == [FARM_FILE]


def test_joining_repairs_a_broken_farm_file_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / FARM_FILE).write_text("{broken")
    result = join(tmp_path, FIXED.join_code())
    assert result.changed and result.previous is None and result.backup is not None
    assert result.backup.read_text() == "{broken"
    assert load(tmp_path) == FIXED

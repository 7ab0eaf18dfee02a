"""siovd.host.definitions: mdevctl-style persistent definitions, saved atomically."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siovd.host.definitions import (
    FILE_NAME,
    CorruptDefinitionsError,
    Definition,
    DefinitionStore,
    definitions_from_dumpjson,
    dumpjson,
    make_definition,
)
from siovd.model.errors import SiovError

U1 = "0b8c5a3e-6f7d-4c43-9a7e-1d2f3b4c5d6e"
U2 = "8f0a4b2c-1d3e-4f5a-8b6c-7d8e9f0a1b2c"
U3 = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DefinitionStore]:
    s = DefinitionStore(tmp_path / "state")
    yield s
    s.close()


def reopen(store: DefinitionStore) -> DefinitionStore:
    store.close()
    return DefinitionStore(store.dir)


# ---- define / get / list / undefine ----------------------------------------------------------


def test_define_persists(store: DefinitionStore) -> None:
    d = store.define(U1, "dsa0", "dsa-1dwq", start="auto", attrs=[{"wq_size": "16"}])
    assert d == Definition(U1, "dsa0", "dsa-1dwq", "auto", (("wq_size", "16"),))
    again = reopen(store)
    try:
        assert again.get(U1) == d
        assert again.list() == [d]
        assert U1 in again
    finally:
        again.close()


def test_define_without_uuid_makes_one(store: DefinitionStore) -> None:
    d = store.define(None, "dsa0", "dsa-1swq")
    assert store.get(d.uuid) == d
    assert d.start == "manual"
    assert d.attrs == ()


def test_uuid_is_canonicalized(store: DefinitionStore) -> None:
    d = store.define(U1.upper(), "dsa0", "dsa-1dwq")
    assert d.uuid == U1
    assert store.get("{" + U1.upper() + "}") == d
    assert U1.replace("-", "") in store


def test_define_twice_is_eexist(store: DefinitionStore) -> None:
    store.define(U1, "dsa0", "dsa-1dwq")
    with pytest.raises(SiovError) as exc:
        store.define(U1, "dsa0", "dsa-1swq")
    assert exc.value.errno == errno.EEXIST
    assert exc.value.message == f"Device {U1} on dsa0 already defined"  # mdevctl's words
    assert store.get(U1).mdev_type == "dsa-1dwq"


def test_one_uuid_under_two_parents(store: DefinitionStore) -> None:
    # mdevctl keys definitions by parent and UUID (testdata/list/defined.json has one UUID
    # under 0000:00:02.0 and 0000:00:03.0)
    a = store.define(U1, "0000:00:02.0", "vfio_ap-passthrough")
    b = store.define(U1, "0000:00:03.0", "vfio_ap-passthrough", attrs=[{"x": "1"}])
    assert store.find(U1) == [a, b] and store.get(U1, "0000:00:03.0") == b
    with pytest.raises(SiovError) as exc:
        store.get(U1)
    assert exc.value.errno == errno.EINVAL and "Please specify a parent" in exc.value.message
    again = reopen(store)
    try:
        assert again.find(U1) == [a, b]
        assert again.undefine(U1, "0000:00:02.0") == [a]
        assert again.undefine(U1) == [b] and U1 not in again
    finally:
        again.close()


def test_add_many_is_all_or_nothing(store: DefinitionStore) -> None:
    store.define(U2, "dsa0", "t")
    batch = [make_definition(U1, "p1", "t"), make_definition(U1, "p2", "t")]
    clash = [*batch, make_definition(U2, "dsa0", "t")]
    with pytest.raises(SiovError) as exc:
        store.add_many(clash)
    assert exc.value.errno == errno.EEXIST and len(store) == 1
    assert len(reopen_len(store)) == 1
    with pytest.raises(SiovError):
        store.add_many([batch[0], batch[0]])  # the same definition twice in one batch
    assert store.add_many(batch) == batch and len(store) == 3


def reopen_len(store: DefinitionStore) -> list[Definition]:
    again = reopen(store)
    try:
        return again.list()
    finally:
        again.close()


def test_undefine(store: DefinitionStore) -> None:
    d = store.define(U1, "dsa0", "dsa-1dwq")
    store.define(U2, "dsa1", "dsa-1dwq")
    assert store.undefine(U1) == [d]
    assert U1 not in store
    again = reopen(store)
    try:
        assert [x.uuid for x in again.list()] == [U2]
    finally:
        again.close()


def test_undefine_unknown_is_enoent(store: DefinitionStore) -> None:
    with pytest.raises(SiovError) as exc:
        store.undefine(U1)
    assert exc.value.errno == errno.ENOENT
    assert exc.value.message == f"mdev {U1} is not defined"


def test_undefine_under_the_wrong_parent_is_enoent(store: DefinitionStore) -> None:
    store.define(U1, "dsa0", "dsa-1dwq")
    with pytest.raises(SiovError) as exc:
        store.undefine(U1, parent="dsa1")
    assert exc.value.errno == errno.ENOENT
    assert "not defined on parent dsa1 (it is defined on dsa0)" in exc.value.message
    assert U1 in store


def test_get_unknown_is_enoent(store: DefinitionStore) -> None:
    with pytest.raises(SiovError) as exc:
        store.get(U1)
    assert exc.value.errno == errno.ENOENT


def test_list_sorted_and_by_parent(store: DefinitionStore) -> None:
    store.define(U3, "dsa1", "t")
    store.define(U2, "dsa0", "t", start="auto")
    store.define(U1, "dsa1", "t", start="auto")
    assert [(d.parent, d.uuid) for d in store.list()] == [("dsa0", U2), ("dsa1", U1), ("dsa1", U3)]
    assert [d.uuid for d in store.list("dsa1")] == [U1, U3]
    assert [d.uuid for d in store.autostart()] == [U2, U1]
    assert len(store) == 3


def test_modify(store: DefinitionStore) -> None:
    store.define(U1, "dsa0", "dsa-1dwq")
    d = store.modify(U1, start="auto", attrs=[("wq_size", "8")])
    assert (d.start, d.attrs, d.mdev_type) == ("auto", (("wq_size", "8"),), "dsa-1dwq")
    again = reopen(store)
    try:
        assert again.get(U1) == d
        with pytest.raises(SiovError) as exc:
            again.modify(U2, start="auto")
        assert exc.value.errno == errno.ENOENT
        with pytest.raises(SiovError) as exc:
            again.modify(U1, start="sometimes")
        assert exc.value.errno == errno.EINVAL
    finally:
        again.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((("not-a-uuid", "dsa0", "t"), {}), "mdev uuid 'not-a-uuid' is not a UUID"),
        (((U1, "", "t"), {}), "parent '' must be 1 to 255 characters"),
        (((U1, "../etc", "t"), {}), "parent '../etc' must be a single printable word"),
        (((U1, "dsa0", "a b"), {}), "mdev_type 'a b' must be a single printable word"),
        (((U1, "dsa0", "t"), {"start": "boot"}), "start 'boot' is not one of auto, manual"),
        (((U1, "dsa0", "t"), {"attrs": "x=1"}), "attrs must be a list of {name: value} objects"),
        (((U1, "dsa0", "t"), {"attrs": [{"a": "1", "b": "2"}]}), "attrs[0] must hold exactly"),
        (((U1, "dsa0", "t"), {"attrs": [{"a": 1}]}), "attrs[0] value of 'a' must be a string"),
        (((U1, "dsa0", "t"), {"attrs": [{"a/b": "1"}]}), "attrs[0] name 'a/b' must be"),
        (((U1, "dsa0", "t"), {"attrs": [42]}), "attrs[0] must be a {name: value} object"),
    ],
)
def test_invalid_fields_are_einval(
    store: DefinitionStore, args: tuple[tuple[str, str, str], dict[str, object]], message: str
) -> None:
    positional, keywords = args
    with pytest.raises(SiovError) as exc:
        store.define(*positional, **keywords)  # type: ignore[arg-type]
    assert exc.value.errno == errno.EINVAL
    assert message in exc.value.message
    assert len(store) == 0
    assert not store.path.exists()


# ---- JSON shapes (mdevctl --dumpjson) --------------------------------------------------------


def test_dumpjson_shape(store: DefinitionStore) -> None:
    assert store.dumpjson() == []
    store.define(U2, "dsa0", "dsa-1swq", start="auto", attrs=[{"wq_size": "16"}, {"x": "y"}])
    store.define(U1, "dsa0", "dsa-1dwq")
    store.define(U3, "0000:00:02.0", "i915-GVTg_V5_4")
    assert store.dumpjson() == [
        {
            "0000:00:02.0": [
                {U3: {"mdev_type": "i915-GVTg_V5_4", "start": "manual", "attrs": []}},
            ],
            "dsa0": [
                {U1: {"mdev_type": "dsa-1dwq", "start": "manual", "attrs": []}},
                {
                    U2: {
                        "mdev_type": "dsa-1swq",
                        "start": "auto",
                        "attrs": [{"wq_size": "16"}, {"x": "y"}],
                    }
                },
            ],
        }
    ]
    assert store.dumpjson("dsa0")[0].keys() == {"dsa0"}


def test_mdevctl_output_is_accepted() -> None:
    """The list shape exactly as ``mdevctl list --defined --dumpjson`` prints it."""
    text = """[
      {
        "0000:00:02.0": [
          {
            "4b20d080-1b54-4048-85b3-a6a62d165c01": {
              "mdev_type": "i915-GVTg_V5_8",
              "start": "auto",
              "attrs": [
                {"some_attr": "value"}
              ]
            }
          }
        ]
      }
    ]"""
    (d,) = definitions_from_dumpjson(json.loads(text))
    assert d == Definition(
        "4b20d080-1b54-4048-85b3-a6a62d165c01",
        "0000:00:02.0",
        "i915-GVTg_V5_8",
        "auto",
        (("some_attr", "value"),),
    )


def test_single_definition_round_trips_into_define(store: DefinitionStore) -> None:
    original = store.define(U1, "dsa0", "dsa-1dwq", start="auto", attrs=[{"wq_size": "4"}])
    config = json.loads(json.dumps(store.get(U1).config_json()))
    assert config == {"mdev_type": "dsa-1dwq", "start": "auto", "attrs": [{"wq_size": "4"}]}
    store.undefine(U1)
    assert store.define_config("dsa0", config, uuid=U1) == original
    copy = store.define_config("dsa1", config)  # a new UUID when none is given
    assert copy.uuid != U1
    assert (copy.parent, copy.attrs) == ("dsa1", original.attrs)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "must be an object with mdev_type, start and attrs"),
        ({"start": "auto"}, "mdev definition has no 'mdev_type'"),
        ({"mdev_type": "t"}, "mdev definition has no 'start'"),
        ({"mdev_type": "t", "start": "auto", "uuid": U1}, "unknown field(s) in mdev definition"),
    ],
)
def test_bad_single_definition(store: DefinitionStore, config: object, message: str) -> None:
    with pytest.raises(SiovError) as exc:
        store.define_config("dsa0", config, uuid=U1)
    assert exc.value.errno == errno.EINVAL
    assert message in exc.value.message


# Printable, no whitespace, no '/': what a parent, type or attribute name may be.
names = st.text(
    st.characters(categories=["L", "N", "Pc", "Pd", "Po"], exclude_characters="/"),
    min_size=1,
    max_size=12,
)
definition_strategy = st.builds(
    make_definition,
    uuid=st.uuids().map(str),
    parent=names,
    mdev_type=names,
    start=st.sampled_from(["auto", "manual"]),
    attrs=st.lists(st.tuples(names, st.text(max_size=20)), max_size=4),
)


@given(st.lists(definition_strategy, max_size=8, unique_by=lambda d: d.uuid))
def test_dumpjson_round_trips(definitions: list[Definition]) -> None:
    back = definitions_from_dumpjson(json.loads(json.dumps(dumpjson(definitions))))
    assert sorted(back, key=lambda d: d.uuid) == sorted(definitions, key=lambda d: d.uuid)


# ---- storage: corruption, locking, failed saves ----------------------------------------------


def test_corrupt_file_is_refused_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with DefinitionStore(state) as s:
        s.define(U1, "dsa0", "t")
    path = state / FILE_NAME
    damaged = path.read_bytes()[:-20]
    path.write_bytes(damaged)
    with pytest.raises(CorruptDefinitionsError) as exc:
        DefinitionStore(state)
    assert exc.value.errno == errno.EUCLEAN
    assert str(path) in exc.value.message
    assert "repair or remove" in exc.value.message
    assert path.read_bytes() == damaged  # left in place, not replaced by an empty store
    assert exc.value.copy.read_bytes() == damaged
    assert exc.value.copy.parent == state
    with pytest.raises(CorruptDefinitionsError) as again:  # still refused; a second copy
        DefinitionStore(state)
    assert again.value.copy != exc.value.copy


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x80abc", "can't decode byte 0x80"),
        (b"[]", "not a siovd-mdev-definitions file"),
        (b'{"format": "siovd-mdev-definitions", "version": 99}', "version 99 is not 1"),
        (
            b'{"format": "siovd-mdev-definitions", "version": 1, "definitions": {}}',
            "a definition list must be a JSON array",
        ),
        (
            b'{"format": "siovd-mdev-definitions", "version": 1, "definitions":'
            b' [{"p": [{"' + U1.encode() + b'": {"mdev_type": "t", "start": "auto"}}]},'
            b' {"p": [{"' + U1.encode() + b'": {"mdev_type": "t", "start": "auto"}}]}]}',
            f"mdev {U1} is defined twice on p",
        ),
        (b"[" * 100000, "recursion"),
    ],
)
def test_unusable_files(tmp_path: Path, content: bytes, reason: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(content)
    with pytest.raises(CorruptDefinitionsError) as exc:
        DefinitionStore(state)
    assert reason in exc.value.message
    assert (state / FILE_NAME).read_bytes() == content


def test_one_store_per_state_directory(tmp_path: Path) -> None:
    first = DefinitionStore(tmp_path)
    with pytest.raises(SiovError) as exc:
        DefinitionStore(tmp_path)
    assert exc.value.errno == errno.EBUSY
    assert "in use by another siovd" in exc.value.message
    first.close()
    DefinitionStore(tmp_path).close()


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    with DefinitionStore(tmp_path) as s:
        s.define(U1, "dsa0", "t")
    stale = tmp_path / f".{FILE_NAME}.abc123.tmp"
    stale.write_text('{"half": ')
    with DefinitionStore(tmp_path) as s:
        assert not stale.exists()
        assert [d.uuid for d in s.list()] == [U1]


def test_failed_write_changes_nothing(
    store: DefinitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.define(U1, "dsa0", "t")
    before = store.path.read_bytes()

    def no_space(path: object, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(SiovError) as exc:
        store.define(U2, "dsa0", "t")
    assert exc.value.errno == errno.ENOSPC
    assert "cannot save the mdev definitions" in exc.value.message
    assert U2 not in store  # memory still matches the disk
    assert store.path.read_bytes() == before
    assert list(store.dir.glob(".*.tmp")) == []  # the temporary file was cleaned up


def test_failed_directory_sync_still_tracks_the_disk(
    store: DefinitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SiovError) as exc:
        store.define(U1, "dsa0", "t")
    assert exc.value.errno == errno.EIO
    # The rename happened, so the definition is visible; memory agrees with the file.
    assert U1 in store
    monkeypatch.undo()
    again = reopen(store)
    try:
        assert U1 in again
    finally:
        again.close()


# ---- crash safety: SIGKILL in the middle of a storm of defines -------------------------------

STORM = Path(__file__).with_name("service_define_storm.py")


def test_acknowledged_defines_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(0x5109D)
    for run in range(20):
        state = tmp_path / f"run{run}"
        child = subprocess.Popen(
            [sys.executable, str(STORM), str(state)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        acknowledged = []
        for _ in range(rng.randint(0, 30)):
            acknowledged.append(child.stdout.readline().strip())
        # The child keeps defining meanwhile; a random pause moves the kill to an arbitrary
        # point of its loop (with a truncate-then-write save, about one run in four tears the
        # file).
        time.sleep(rng.uniform(0, 0.003))
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.stdout.close()
        assert child.wait(timeout=60) == -signal.SIGKILL
        acknowledged += [line for line in rest.splitlines(keepends=True) if line.endswith("\n")]
        acknowledged = [u.strip() for u in acknowledged]

        if (state / FILE_NAME).exists():
            json.loads((state / FILE_NAME).read_text())  # parses on its own
        with DefinitionStore(state) as store:
            missing = [u for u in acknowledged if u not in store]
            assert missing == [], f"run {run}: lost acknowledged defines {missing}"
            # At most one define finished after its UUID could be printed.
            assert len(acknowledged) <= len(store) <= len(acknowledged) + 1
            assert list(state.glob(".*.tmp")) == []

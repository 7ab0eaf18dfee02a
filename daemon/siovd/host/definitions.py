"""Persistent mdev definitions, as mdevctl keeps them: what to create, not what exists now.

A definition names an mdev by UUID, with its parent, type, start policy (``auto``: create it when
the daemon starts; ``manual``: on request) and an ordered list of attributes. The JSON follows
mdevctl's ``--dumpjson`` shapes, so definitions move between ``mdevctl`` and ``siovctl``:

- a list of definitions: ``[{"<parent>": [{"<uuid>": {"mdev_type", "start", "attrs"}}]}]``
  (``[]`` when there are none);
- one definition's config: ``{"mdev_type": "...", "start": "auto", "attrs": [{"name": "v"}]}``,
  which :meth:`DefinitionStore.define_config` takes back with a parent (and a UUID, or a new one).

A definition is keyed by parent and UUID, as mdevctl keys its files
(``/etc/mdevctl.d/<parent>/<uuid>``): one UUID may be defined under two parents (mdevctl's own
testdata/list/defined.json has one). Only one of them can run at a time, since a UUID names a
single device on the bus; a command that names a UUID defined under several parents needs the
parent too, as mdevctl's does.

Storage is one file, ``<state_dir>/mdevs.json``, replaced atomically on every change: write a
temporary file in the same directory, fsync it, ``rename`` it over the old one, fsync the
directory. A reader therefore sees the old or the new file, never a mix, and a change is on disk
before the call returns. A file that does not parse is never overwritten or dropped: loading
refuses, with a copy kept aside.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import json
import os
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from siovd.model.errors import SiovError

Start = Literal["auto", "manual"]
START_VALUES: tuple[Start, ...] = ("auto", "manual")

FILE_NAME = "mdevs.json"
LOCK_NAME = ".siovd.lock"  # held while a store is open: one daemon per state directory
FORMAT = "siovd-mdev-definitions"
VERSION = 1
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class Definition:
    """One defined mdev. ``attrs`` keeps mdevctl's order: attributes are written in sequence."""

    uuid: str
    parent: str
    mdev_type: str
    start: Start = "manual"
    attrs: tuple[tuple[str, str], ...] = ()

    def config_json(self) -> dict[str, Any]:
        """The single-definition shape (mdevctl ``list -u UUID --dumpjson``)."""
        return {
            "mdev_type": self.mdev_type,
            "start": self.start,
            "attrs": [{name: value} for name, value in self.attrs],
        }

    def attrs_json(self) -> list[dict[str, str]]:
        return [{name: value} for name, value in self.attrs]


# ---- validation ------------------------------------------------------------------------------


def _invalid(message: str) -> SiovError:
    return SiovError(errno.EINVAL, message)


def canonical_uuid(value: object) -> str:
    """The lowercase hyphenated form of a UUID, or ``SiovError(EINVAL)``."""
    if not isinstance(value, str):
        raise _invalid(f"mdev uuid must be a string, got {type(value).__name__}")
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise _invalid(f"mdev uuid {value!r} is not a UUID") from None


def _name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{what} must be a string, got {type(value).__name__}")
    if not value or len(value) > _NAME_MAX:
        raise _invalid(f"{what} {value!r} must be 1 to {_NAME_MAX} characters")
    if "/" in value or not value.isprintable() or value != value.strip() or " " in value:
        raise _invalid(f"{what} {value!r} must be a single printable word without '/'")
    return value


def _start(value: object) -> Start:
    if value not in START_VALUES:
        raise _invalid(f"start {value!r} is not one of auto, manual")
    return value


def _attrs(value: object) -> tuple[tuple[str, str], ...]:
    """mdevctl's ``[{"name": "value"}, ...]``, or ``(name, value)`` pairs; None is empty."""
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _invalid("attrs must be a list of {name: value} objects")
    result = []
    for index, item in enumerate(value):
        if isinstance(item, Mapping):
            if len(item) != 1:
                raise _invalid(f"attrs[{index}] must hold exactly one name: value pair")
            ((name, val),) = item.items()
        elif isinstance(item, tuple | list) and len(item) == 2:
            name, val = item
        else:
            raise _invalid(f"attrs[{index}] must be a {{name: value}} object")
        name = _name(name, f"attrs[{index}] name")
        if not isinstance(val, str):
            raise _invalid(f"attrs[{index}] value of {name!r} must be a string")
        result.append((name, val))
    return tuple(result)


def attrs_from_json(value: object) -> tuple[tuple[str, str], ...]:
    """mdevctl's ``[{"name": "value"}, ...]`` as ``(name, value)`` pairs (``EINVAL`` if not)."""
    return _attrs(value)


def make_definition(
    uuid: str,
    parent: str,
    mdev_type: str,
    start: str = "manual",
    attrs: object = None,
) -> Definition:
    """A validated :class:`Definition` (``SiovError(EINVAL)`` naming the bad field)."""
    return Definition(
        uuid=canonical_uuid(uuid),
        parent=_name(parent, "parent"),
        mdev_type=_name(mdev_type, "mdev_type"),
        start=_start(start),
        attrs=_attrs(attrs),
    )


def definition_from_config(uuid: str, parent: str, config: object) -> Definition:
    """Read the single-definition shape; ``mdev_type`` and ``start`` are required (mdevctl)."""
    if not isinstance(config, Mapping):
        raise _invalid("an mdev definition must be an object with mdev_type, start and attrs")
    unknown = set(config) - {"mdev_type", "start", "attrs"}
    if unknown:
        raise _invalid(f"unknown field(s) in mdev definition: {', '.join(sorted(unknown))}")
    for key in ("mdev_type", "start"):
        if key not in config:
            raise _invalid(f"mdev definition has no {key!r}")
    return make_definition(uuid, parent, config["mdev_type"], config["start"], config.get("attrs"))


def dumpjson(definitions: Iterable[Definition]) -> list[dict[str, list[dict[str, Any]]]]:
    """mdevctl's ``list --dumpjson`` shape, parents and UUIDs in sorted order."""
    by_parent: dict[str, list[Definition]] = {}
    for d in sorted(definitions, key=lambda d: (d.parent, d.uuid)):
        by_parent.setdefault(d.parent, []).append(d)
    if not by_parent:
        return []
    return [{p: [{d.uuid: d.config_json()} for d in defs] for p, defs in by_parent.items()}]


def definitions_from_dumpjson(data: object) -> list[Definition]:
    """Parse the list shape back (``SiovError(EINVAL)`` on any deviation)."""
    if not isinstance(data, list):
        raise _invalid("a definition list must be a JSON array")
    result = []
    for group in data:
        if not isinstance(group, Mapping):
            raise _invalid("each element of a definition list must map parents to devices")
        for parent, devices in group.items():
            if not isinstance(devices, list):
                raise _invalid(f"devices of parent {parent!r} must be a list")
            for device in devices:
                if not isinstance(device, Mapping) or len(device) != 1:
                    raise _invalid(f"each device of parent {parent!r} must be {{uuid: config}}")
                ((uuid, config),) = device.items()
                result.append(definition_from_config(uuid, parent, config))
    return result


# ---- the store -------------------------------------------------------------------------------


class CorruptDefinitionsError(SiovError):
    """The definitions file does not parse; the daemon must not start over it."""

    def __init__(self, path: Path, reason: str, copy: Path) -> None:
        super().__init__(
            errno.EUCLEAN,
            f"{path}: cannot load the mdev definitions ({reason}). The file is left as it is"
            f" and a copy was saved as {copy}; repair or remove {path}, then start again",
        )
        self.path = path
        self.copy = copy


class DefinitionStore:
    """The definitions of one state directory, loaded at open, saved on every change.

    Holds an exclusive lock on the directory while open, so two daemons never write over each
    other's definitions (the second gets ``SiovError(EBUSY)``).
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self._defs: dict[tuple[str, str], Definition] = {}  # (parent, uuid) -> definition
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._remove_stale_temporaries()
            self._defs = self._load()
        except BaseException:
            self.close()
            raise

    # -- lifecycle --

    def _lock(self) -> int:
        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SiovError(
                errno.EBUSY, f"state directory {self.dir} is in use by another siovd"
            ) from None
        return fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> DefinitionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remove_stale_temporaries(self) -> None:
        # Left by a save interrupted before its rename: never the committed state.
        for stale in self.dir.glob(f".{FILE_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)

    def _load(self) -> dict[tuple[str, str], Definition]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            if doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version')!r} is not {VERSION}")
            definitions = definitions_from_dumpjson(doc.get("definitions"))
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; absurd nesting is a
        # RecursionError.
        except (ValueError, RecursionError, SiovError) as exc:
            reason = exc.message if isinstance(exc, SiovError) else str(exc)
            raise CorruptDefinitionsError(self.path, reason, self._keep_aside(raw)) from None
        result: dict[tuple[str, str], Definition] = {}
        for d in definitions:
            if (d.parent, d.uuid) in result:
                reason = f"mdev {d.uuid} is defined twice on {d.parent}"
                raise CorruptDefinitionsError(self.path, reason, self._keep_aside(raw))
            result[d.parent, d.uuid] = d
        return result

    def _keep_aside(self, raw: bytes) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(1000):
            suffix = f".corrupt-{stamp}" + (f".{n}" if n else "")
            copy = self.path.with_name(self.path.name + suffix)
            try:
                fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
                fh.flush()
                os.fsync(fh.fileno())
            return copy
        raise SiovError(errno.EEXIST, f"too many corrupt copies of {self.path} in {self.dir}")

    # -- saving --

    def _save(self, defs: dict[tuple[str, str], Definition]) -> None:
        """Make ``defs`` the committed state, atomically and durably, then adopt it."""
        doc = {"format": FORMAT, "version": VERSION, "definitions": dumpjson(defs.values())}
        data = (json.dumps(doc, indent=2) + "\n").encode()
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{FILE_NAME}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self._defs = defs  # the new file is in place: memory follows the disk
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)  # the rename itself is durable only once the directory is
            finally:
                os.close(dir_fd)
        except OSError as exc:
            code = exc.errno if exc.errno is not None else errno.EIO
            raise SiovError(
                code, f"cannot save the mdev definitions to {self.path}: {exc.strerror or exc}"
            ) from None

    # -- the operations --

    def define(
        self,
        uuid: str | None,
        parent: str,
        mdev_type: str,
        *,
        start: str = "manual",
        attrs: object = None,
    ) -> Definition:
        """Persist a new definition; a None ``uuid`` gets a fresh random one (mdevctl define).

        ``EEXIST`` when the parent already has the UUID defined, ``EINVAL`` for a bad field.
        """
        if uuid is None:
            uuid = str(uuidlib.uuid4())
        return self.add(make_definition(uuid, parent, mdev_type, start, attrs))

    def define_config(self, parent: str, config: object, uuid: str | None = None) -> Definition:
        """Define from the single-definition JSON shape (mdevctl ``define --jsonfile``)."""
        return self.add(definition_from_config(uuid or str(uuidlib.uuid4()), parent, config))

    def add(self, definition: Definition) -> Definition:
        """Persist an already validated :class:`Definition` (see :func:`make_definition`);
        ``EEXIST`` when its parent already has that UUID defined."""
        self.add_many([definition])
        return definition

    def add_many(self, definitions: Iterable[Definition]) -> builtins.list[Definition]:
        """Persist several definitions in one save: all of them or, on any ``EEXIST``
        (defined already, or twice in ``definitions``), none."""
        new = dict(self._defs)
        added = []
        for d in definitions:
            if (d.parent, d.uuid) in new:
                raise SiovError(errno.EEXIST, f"Device {d.uuid} on {d.parent} already defined")
            new[d.parent, d.uuid] = d
            added.append(d)
        if added:
            self._save(new)
        return added

    def replace(self, definition: Definition) -> Definition:
        """Replace the definition of the same parent and UUID (mdevctl modify; ``ENOENT`` when
        there is none)."""
        key = (definition.parent, definition.uuid)
        if key not in self._defs:
            raise SiovError(
                errno.ENOENT, f"mdev {definition.uuid} is not defined on {definition.parent}"
            )
        if self._defs[key] != definition:
            self._save({**self._defs, key: definition})
        return definition

    def modify(
        self,
        uuid: str,
        *,
        parent: str | None = None,
        mdev_type: str | None = None,
        start: str | None = None,
        attrs: object = None,
    ) -> Definition:
        """Change a definition's type, start policy or attributes (mdevctl modify)."""
        old = self.get(uuid, parent)
        new = replace(
            old,
            mdev_type=old.mdev_type if mdev_type is None else _name(mdev_type, "mdev_type"),
            start=old.start if start is None else _start(start),
            attrs=old.attrs if attrs is None else _attrs(attrs),
        )
        return self.replace(new)

    def undefine(self, uuid: str, parent: str | None = None) -> builtins.list[Definition]:
        """Forget the definitions of ``uuid`` (under ``parent`` only, when given), as mdevctl
        undefine does; ``ENOENT`` if there is none."""
        gone = self.find(uuid, parent)
        if not gone:
            key = canonical_uuid(uuid)
            where = f" on parent {parent}" if parent is not None else ""
            elsewhere = self.find(uuid)
            also = (
                f" (it is defined on {', '.join(d.parent for d in elsewhere)})" if elsewhere else ""
            )
            raise SiovError(errno.ENOENT, f"mdev {key} is not defined{where}{also}")
        keys = {(d.parent, d.uuid) for d in gone}
        self._save({k: v for k, v in self._defs.items() if k not in keys})
        return gone

    def find(self, uuid: str | None = None, parent: str | None = None) -> builtins.list[Definition]:
        """Definitions matching ``uuid`` and ``parent`` (either may be None), sorted."""
        key = canonical_uuid(uuid) if uuid is not None else None
        return [d for d in self.list(parent) if key is None or d.uuid == key]

    def get(self, uuid: str, parent: str | None = None) -> Definition:
        """The one definition of ``uuid`` (under ``parent``): ``ENOENT`` when there is none,
        ``EINVAL`` when the UUID is defined under several parents and none is named."""
        found = self.find(uuid, parent)
        if not found:
            key = canonical_uuid(uuid)
            where = f" on {parent}" if parent is not None else ""
            raise SiovError(errno.ENOENT, f"mdev {key} is not defined{where}")
        if len(found) > 1:
            raise SiovError(
                errno.EINVAL,
                f"Multiple definitions found for device {found[0].uuid}"
                f" (on {', '.join(d.parent for d in found)}). Please specify a parent.",
            )
        return found[0]

    def list(self, parent: str | None = None) -> builtins.list[Definition]:
        """Definitions sorted by parent then UUID, optionally of one parent only."""
        found = (d for d in self._defs.values() if parent is None or d.parent == parent)
        return sorted(found, key=lambda d: (d.parent, d.uuid))

    def autostart(self) -> builtins.list[Definition]:
        """What the daemon creates at start: the ``auto`` definitions."""
        return [d for d in self.list() if d.start == "auto"]

    def dumpjson(
        self, parent: str | None = None
    ) -> builtins.list[dict[str, builtins.list[dict[str, Any]]]]:
        return dumpjson(self.list(parent))

    def __len__(self) -> int:
        return len(self._defs)

    def __contains__(self, uuid: object) -> bool:
        try:
            key = canonical_uuid(uuid)
        except SiovError:
            return False
        return any(u == key for _, u in self._defs)

"""A bag's messages as the message types installed here, also where the bag recorded another version of a type.

Message definitions change between versions of a package: ROS4HRI's ``hri_msgs/LiveSpeech`` gained ``language`` in
2023, which became ``locale`` in 2024 (hri_msgs 2.1.0; ``language`` removed in 2.2.1), ``ddvlm_msgs/Utterance`` gained
``confidence``. A bag keeps the bytes (CDR) of the version its robot ran, and
decoding them as the installed version fails ("Fast CDR exception") or reads fields from the wrong bytes. A rosbag2
bag (mcap, and sqlite3 since Iron) also stores each topic's definition. ``RecordedTypes`` compares it with the
installed type, field names and nesting: where they match, rclpy decodes the CDR as it is; where they differ, the
bag's own definition decodes it (rosbags) and the fields are copied by name into the installed type, so fields the
recorded version lacks keep their defaults (0, ''), as a publisher of that version leaves them, except a field that
was renamed (``RENAMED_FIELDS``), which takes its value under the other name. ``differences`` says which topics were
read so, and what differed.
"""
from __future__ import annotations

import array
import importlib
from pathlib import Path

import numpy as np

_TYPECODES = {np.dtype(d): c for d, c in (("uint8", "B"), ("int8", "b"), ("uint16", "H"), ("int16", "h"),
                                          ("uint32", "I"), ("int32", "i"), ("uint64", "Q"), ("int64", "q"),
                                          ("float32", "f"), ("float64", "d"))}


RENAMED_FIELDS = {  # message type -> {a field: its name in another version of the type}
    "hri_msgs/msg/LiveSpeech": {"locale": "language", "language": "locale"},  # hri_msgs 2.1.0 renamed it
}


class DefinitionError(ValueError):
    """A topic's messages cannot be read as the installed type: the bag's definition differs and is missing or
    unreadable."""


def installed_class(namespaced) -> type:
    """The rclpy class of a rosidl_parser NamespacedType (e.g. std_msgs/msg/Header)."""
    return getattr(importlib.import_module(".".join(namespaced.namespaces)), namespaced.name)


def installed_shape(cls) -> tuple:
    """The field names of an rclpy message class, nested: ((name, shape of a nested message or None), ...)."""
    from rosidl_parser.definition import AbstractNestedType, NamespacedType

    shape = []
    for name, slot in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
        inner = slot.value_type if isinstance(slot, AbstractNestedType) else slot
        shape.append((name, installed_shape(installed_class(inner)) if isinstance(inner, NamespacedType) else None))
    return tuple(shape)


def recorded_shape(store, msgtype: str) -> tuple:
    """The same for a type as a rosbags typestore defines it."""
    from rosbags.typesys.base import Nodetype

    shape = []
    for name, (kind, detail) in store.fielddefs[msgtype][1]:
        if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            kind, detail = detail[0]
        shape.append((name, recorded_shape(store, detail) if kind == Nodetype.NAME else None))
    return tuple(shape)


def shape_difference(installed: tuple, recorded: tuple, prefix: str = "") -> list[str]:
    """What differs between two shapes, in words ('no language', 'extra mood', 'header.stamp: ...')."""
    have, had = dict(installed), dict(recorded)
    words = [f"no {prefix}{n}" for n in have if n not in had] + [f"extra {prefix}{n}" for n in had if n not in have]
    for name in [n for n in have if n in had]:
        if (have[name] is None) != (had[name] is None):
            words.append(f"{prefix}{name} of another kind")
        elif have[name] is not None:
            words += shape_difference(have[name], had[name], f"{prefix}{name}.")
    if not words and [n for n, _ in installed] != [n for n, _ in recorded]:
        words.append(f"{prefix or 'fields '}in another order")
    return words


def copy_into(cls, source, renamed: dict[str, str] | None = None):
    """A new ``cls`` message with the fields of ``source`` (a rosbags message) of the same names, or of the names
    ``renamed`` gives them in the source's version; the others keep their defaults."""
    from rosidl_parser.definition import AbstractNestedType, AbstractSequence, NamespacedType

    msg = cls()
    for name, slot in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
        there = name if hasattr(source, name) else (renamed or {}).get(name)
        if there is None or not hasattr(source, there):
            continue
        value = getattr(source, there)
        inner = slot.value_type if isinstance(slot, AbstractNestedType) else slot
        if isinstance(inner, NamespacedType):
            nested = installed_class(inner)
            value = [copy_into(nested, v) for v in value] if isinstance(slot, AbstractNestedType) else \
                copy_into(nested, value)
        elif isinstance(value, np.ndarray) and isinstance(slot, AbstractSequence):  # rclpy: array.array or a list
            value = array.array(_TYPECODES[value.dtype], value.tobytes()) if value.dtype in _TYPECODES else \
                value.tolist()
        try:
            setattr(msg, name, value)
        except (AssertionError, TypeError, ValueError):
            pass  # a field whose type changed: its default (the difference is reported by name only)
    return msg


class RecordedTypes:
    """Decodes a bag's messages into the installed rclpy types (``decode``), by the bag's own definitions on the
    topics where they differ from the installed ones."""

    def __init__(self, path: str | Path):
        from rosbags.rosbag2 import Reader

        with Reader(Path(path)) as reader:
            self.definitions = {c.topic: (c.msgtype, c.msgdef) for c in reader.connections}
            self.digests = {c.topic: c.digest for c in reader.connections}  # RIHS01_... (type hash) where recorded
        self._stores: dict[str, object] = {}  # topic -> the rosbags typestore of the bag's definition, if readable
        self.differences: dict[str, list[str]] = {}  # topic -> what differs from the installed type, in words (its
        #                                              messages are decoded by the bag's definition)
        self._checked: set[str] = set()  # topics whose definitions were compared

    def decode(self, topic: str, raw: bytes, cls):
        """One message of ``topic`` as ``cls``; DefinitionError when it cannot be read as that."""
        from rclpy.serialization import deserialize_message

        if topic not in self._checked:
            self._check(topic, cls)
        if topic not in self.differences:
            try:
                return deserialize_message(raw, cls)
            except Exception as e:  # noqa: BLE001 - rclpy raises RMWError (Fast CDR) for bytes of another definition
                if topic not in self._stores:
                    raise DefinitionError(
                        f"{topic}: a message does not decode as the installed {self._name(topic)} "
                        f"({str(e).splitlines()[0]}), and the bag stores no definition of it that can be read (a "
                        "sqlite3 bag recorded before Iron stores none): it was recorded with another version of the "
                        "message; replay it where that version is installed") from None
                self.differences[topic] = ["fields of other types"]  # same names: read by the bag's from now on
        try:
            recorded = self._stores[topic].deserialize_cdr(raw, self._name(topic))
        except Exception as e:  # noqa: BLE001 - rosbags raises several types for bytes that are not the message
            raise DefinitionError(f"{topic}: a message does not decode by the bag's own definition of "
                                  f"{self._name(topic)} either ({type(e).__name__}: {e}): a broken message") from None
        return copy_into(cls, recorded, RENAMED_FIELDS.get(self._name(topic)))

    def _check(self, topic: str, cls) -> None:
        """Compare the bag's definition of the topic's type with the installed one; where they differ, keep a
        typestore of the bag's to decode it."""
        self._checked.add(topic)
        msgtype, msgdef = self.definitions.get(topic, ("", None))
        store = self._store(msgtype, msgdef) if msgdef is not None and msgdef.data.strip() else None
        if store is None:
            return  # nothing readable recorded to compare: decoded as installed (an error says so if it fails)
        self._stores[topic] = store
        difference = shape_difference(installed_shape(cls), recorded_shape(store, msgtype))
        if difference:
            self.differences[topic] = difference

    @staticmethod
    def _store(msgtype: str, msgdef):
        """A rosbags typestore of the bag's definition of ``msgtype``; None when rosbags cannot parse it (as if the
        bag had recorded none)."""
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        store = get_typestore(Stores.EMPTY)
        try:
            store.register(get_types_from_idl(msgdef.data) if msgdef.format.name == "IDL" else
                           get_types_from_msg(msgdef.data, msgtype))
        except Exception:  # noqa: BLE001 - rosbags' parsers raise several types
            return None
        return store

    def recorded_msg(self, topic: str) -> tuple[str, str] | None:
        """(definition, RIHS01 type hash or '') as the bag recorded them in ROS 2's .msg format, to write its messages
        to another bag as they are; None when it recorded none (or another format)."""
        _, msgdef = self.definitions.get(topic, ("", None))
        if msgdef is None or msgdef.format.name != "MSG" or not msgdef.data.strip():
            return None
        digest = self.digests.get(topic) or ""
        return msgdef.data, digest if digest.startswith("RIHS01_") else ""

    def _name(self, topic: str) -> str:
        return self.definitions.get(topic, ("?",))[0]

    def summary(self) -> str:
        """'topics recorded with another version of their type: /x (T: no language), ...' ('' when none)."""
        if not self.differences:
            return ""
        listed = "; ".join(f"{topic} ({self._name(topic)}: {', '.join(words)})"
                           for topic, words in sorted(self.differences.items()))
        return (f"recorded with another version of their message type, read by the bag's own definition (missing "
                f"fields keep their defaults): {listed}")

"""ddvlm_ros.recorded: a bag's messages decoded as the installed types, by the bag's own definitions where they
differ (replays of bags recorded with older versions of a message are in test_bag_replay)."""
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ddvlm_ros.recorded import DefinitionError, RecordedTypes, copy_into, installed_shape, recorded_shape, \
    shape_difference


def older_store(**definitions):
    """A Humble typestore with ``definitions`` (message type -> .msg text) registered over its own."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    for name, text in definitions.items():
        store.register(get_types_from_msg(text, name.replace("__", "/")))
    return store


def test_what_differs_between_the_installed_and_a_recorded_definition_is_said_by_field():
    from hri_msgs.msg import LiveSpeech
    from sensor_msgs.msg import Image

    older = older_store(**{"hri_msgs__msg__LiveSpeech": "std_msgs/Header header\nstring incremental\nstring final\n"
                                                        "float64 confidence\nstring mood\n"})
    assert shape_difference(installed_shape(LiveSpeech), recorded_shape(older, "hri_msgs/msg/LiveSpeech")) == [
        "no locale", "extra mood"]
    assert shape_difference(installed_shape(Image), recorded_shape(older, "sensor_msgs/msg/Image")) == []
    stamped = older_store(**{"a__msg__Stamped": "std_msgs/Header header\n", "a__msg__Other": "uint32 seq\n"})
    renamed = older_store(**{"a__msg__Stamped": "a/Other header\n", "a__msg__Other": "uint32 seq\n"})
    assert shape_difference(recorded_shape(stamped, "a/msg/Stamped"), recorded_shape(renamed, "a/msg/Stamped")) == [
        "no header.stamp", "no header.frame_id", "extra header.seq"]
    swapped = older_store(**{"a__msg__Pair": "string b\nstring a\n"})
    pair = older_store(**{"a__msg__Pair": "string a\nstring b\n"})
    assert shape_difference(recorded_shape(pair, "a/msg/Pair"), recorded_shape(swapped, "a/msg/Pair")) == [
        "fields in another order"]


def test_a_recorded_message_is_copied_by_name_into_the_installed_type_with_its_arrays():
    from hri_msgs.msg import IdsList
    from sensor_msgs.msg import CameraInfo, Image

    store = get_typestore(Stores.ROS2_HUMBLE)
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=7, nanosec=5), frame_id="cam")
    image = store.types["sensor_msgs/msg/Image"](header=header, height=2, width=3, encoding="rgb8", is_bigendian=0,
                                                 step=9, data=np.arange(18, dtype=np.uint8))
    copied = copy_into(Image, image)
    assert (copied.header.stamp.sec, copied.header.stamp.nanosec, copied.header.frame_id) == (7, 5, "cam")
    assert (copied.height, copied.width, copied.encoding, bytes(copied.data)) == (2, 3, "rgb8", bytes(range(18)))
    roi = store.types["sensor_msgs/msg/RegionOfInterest"](x_offset=1, y_offset=2, height=3, width=4, do_rectify=True)
    info = store.types["sensor_msgs/msg/CameraInfo"](
        header=header, height=480, width=640, distortion_model="plumb_bob", d=np.array([0.1, -0.2]),
        k=np.arange(9.0), r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0, roi=roi)
    camera = copy_into(CameraInfo, info)
    assert list(camera.d) == [0.1, -0.2] and list(camera.k) == list(np.arange(9.0)) and camera.roi.do_rectify
    older = older_store(**{"hri_msgs__msg__IdsList": "std_msgs/Header header\nstring[] ids\n"})
    ids = copy_into(IdsList, older.types["hri_msgs/msg/IdsList"](header=header, ids=["anna", "bob"]))
    assert ids.ids == ["anna", "bob"]


def write_bag(path: Path, store, topic: str, msgtype: str, msg) -> Path:
    with Writer(path, version=9) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=store)
        writer.write(connection, 1, store.serialize_cdr(msg, msgtype))
    return path


def test_a_topic_whose_recorded_definition_matches_is_decoded_by_rclpy_and_an_unreadable_one_is_refused(tmp_path):
    from rosbags.rosbag2 import Reader
    from std_msgs.msg import String

    store = get_typestore(Stores.ROS2_HUMBLE)
    bag = write_bag(tmp_path / "same", store, "/asr", "std_msgs/msg/String", store.types["std_msgs/msg/String"](
        data="Hi."))
    decoder = RecordedTypes(bag)
    with Reader(bag) as reader:
        (raw,) = [bytes(r) for _, _, r in reader.messages()]
    assert decoder.decode("/asr", raw, String).data == "Hi." and decoder.summary() == "" and not decoder.differences
    import sqlite3

    (db,) = bag.glob("*.db3")
    with sqlite3.connect(db) as connection:  # a definition rosbags cannot parse: as if none were recorded
        connection.execute("UPDATE message_definitions SET encoded_message_definition = 'uint8 = = ]'")
    unreadable = RecordedTypes(bag)
    assert unreadable.decode("/asr", raw, String).data == "Hi." and not unreadable.differences
    with pytest.raises(DefinitionError, match="/asr: a message does not decode as the installed std_msgs/msg/String "
                                              r".*no definition of it that can be read"):
        unreadable.decode("/asr", b"\x00\x01\x00\x00\xff", String)
    with pytest.raises(DefinitionError, match="/asr: a message does not decode by the bag's own definition of "
                                              "std_msgs/msg/String either"):
        decoder.decode("/asr", b"\x00\x01\x00\x00\xff", String)  # no CDR of it: a broken message


def test_a_field_renamed_between_versions_takes_its_value_under_the_other_name(tmp_path):
    """hri_msgs 2.1.0 renamed LiveSpeech's ``language`` ``locale`` (and 2.2.1 removed ``language``): a bag recorded
    on a robot with hri_msgs 2.0 says what language its ASR heard under the old name, and a replay here reads it as
    the locale, so that German speech is still flagged. A field renamed nowhere (``mood``) is not copied."""
    from hri_msgs.msg import LiveSpeech
    from rosbags.rosbag2 import Reader

    from ddvlm_ros.recorded import RENAMED_FIELDS

    older = older_store(**{"hri_msgs__msg__LiveSpeech": "std_msgs/Header header\nstring incremental\nstring final\n"
                                                        "float64 confidence\nstring language\nstring mood\n"})
    said = older.types["hri_msgs/msg/LiveSpeech"](
        header=older.types["std_msgs/msg/Header"](stamp=older.types["builtin_interfaces/msg/Time"](sec=3, nanosec=0),
                                                  frame_id="mic"),
        incremental="", final="Ich habe den Job!", confidence=0.8, language="de-DE", mood="happy")
    bag = write_bag(tmp_path / "hri_msgs_2_0", older, "/humans/voices/anna/speech", "hri_msgs/msg/LiveSpeech", said)
    with Reader(bag) as reader:
        (raw,) = [bytes(r) for _, _, r in reader.messages()]
    decoder = RecordedTypes(bag)
    msg = decoder.decode("/humans/voices/anna/speech", raw, LiveSpeech)
    assert (msg.final, msg.confidence, msg.locale, msg.header.stamp.sec) == ("Ich habe den Job!", 0.8, "de-DE", 3)
    assert decoder.differences["/humans/voices/anna/speech"] == ["no locale", "extra language", "extra mood"]
    assert copy_into(LiveSpeech, said).locale == ""  # without the renames: its default
    assert RENAMED_FIELDS["hri_msgs/msg/LiveSpeech"]["language"] == "locale"  # and back, for a node built with 2.0

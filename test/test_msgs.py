"""msg/ generates into the ddvlm_msgs package and its types travel over a real rclpy graph."""
import time

import pytest

import rclpy
from rclpy.serialization import deserialize_message, serialize_message

from ddvlm_core.labels import LABELS
from ddvlm_msgs.msg import EmotionDistribution, Utterance


def test_fields_and_constants_are_as_documented():
    m = EmotionDistribution()
    for field in ("header", "conversation_id", "utterance_id", "speaker_token", "speaker_id", "labels",
                  "probabilities", "top_label", "confidence", "modalities", "refined", "caption",
                  "caption_source", "latency_ms", "flags"):
        assert hasattr(m, field), field
    assert (EmotionDistribution.MODALITY_TEXT, EmotionDistribution.MODALITY_TEXT_VISUAL) == ("text", "text+visual")
    u = Utterance()
    for field in ("header", "start", "end", "conversation_id", "utterance_id", "speaker_id", "text", "is_final"):
        assert hasattr(u, field), field


def test_the_reset_service_type_is_generated_with_its_documented_fields():
    from ddvlm_msgs.srv import ResetConversation

    assert ResetConversation.Request.get_fields_and_field_types() == {"conversation_id": "string"}
    assert ResetConversation.Response.get_fields_and_field_types() == {"success": "boolean", "message": "string"}


def test_serialization_round_trip():
    m = EmotionDistribution(labels=list(LABELS), probabilities=[1 / 7] * 7, top_label="neutral",
                            speaker_token="<s1>", refined=True, caption="Eyebrows are raised.")
    back = deserialize_message(serialize_message(m), EmotionDistribution)
    assert back.labels == list(LABELS) and back.refined and back.caption == "Eyebrows are raised."
    assert list(back.probabilities) == pytest.approx([1 / 7] * 7)


def test_publish_and_receive_over_a_real_executor():
    rclpy.init()
    try:
        pub_node, sub_node = rclpy.create_node("ddvlm_msg_pub"), rclpy.create_node("ddvlm_msg_sub")
        got = []
        sub_node.create_subscription(Utterance, "utterances_test", got.append, 10)
        pub = pub_node.create_publisher(Utterance, "utterances_test", 10)
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(pub_node)
        executor.add_node(sub_node)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            pub.publish(Utterance(speaker_id="ross", text="I got the job!", is_final=True))
            executor.spin_once(timeout_sec=0.1)
        assert got and got[0].text == "I got the job!" and got[0].is_final
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.shutdown()

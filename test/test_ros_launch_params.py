"""Static checks of what a robot integrator wires up: launch file, params YAML, README table."""
import ast
import re
from pathlib import Path

import yaml

from ddvlm_ros.params import PARAMS, parameter_errors

REPO = Path(__file__).resolve().parents[1]


def launch_calls():
    tree = ast.parse((REPO / "launch" / "emotion.launch.py").read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]


def test_launch_file_starts_the_lifecycle_node_with_params_and_remaps():
    calls = launch_calls()
    node = next(c for c in calls if c.func.id == "LifecycleNode")
    kw = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(kw["package"]) == "ddvlm_ros"
    assert ast.literal_eval(kw["name"]) == "ddvlm_emotion"
    executable = ast.literal_eval(kw["executable"])
    assert f'"{executable} = ddvlm_ros.emotion_node:main"' in (REPO / "setup.py").read_text()
    remapped = [ast.literal_eval(t.elts[0]) for t in kw["remappings"].elts]
    defaults = {p.name: p.default for p in PARAMS}
    topics = ("transcript_topic", "utterance_topic", "image_topic", "compressed_image_topic", "emotion_topic")
    assert set(remapped) == {defaults[k] for k in topics}
    args = {ast.literal_eval(c.args[0]) for c in calls if c.func.id == "DeclareLaunchArgument"}
    assert {"params_file", "transcript_topic", "image_topic", "emotion_topic", "autostart"} <= args
    for c in calls:
        if c.func.id == "DeclareLaunchArgument":
            assert any(k.arg == "description" for k in c.keywords), ast.literal_eval(c.args[0])
    assert "emotion.yaml" in (REPO / "launch" / "emotion.launch.py").read_text()


def test_params_yaml_declares_exactly_the_node_parameters_with_their_defaults():
    doc = yaml.safe_load((REPO / "config" / "emotion.yaml").read_text())
    params = doc["ddvlm_emotion"]["ros__parameters"]
    assert params == {p.name: p.default for p in PARAMS}


def test_readme_parameter_table_matches_the_node():
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", readme, re.M))
    assert set(rows) == {p.name for p in PARAMS}
    for p in PARAMS:
        shown = str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        assert rows[p.name] == shown, p.name


def test_every_declared_parameter_has_a_description(tiny_text_checkpoint):
    import rclpy
    from rclpy.parameter import Parameter

    from ddvlm_ros.emotion_node import EmotionNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = EmotionNode(context=ctx, parameter_overrides=[Parameter("model_dir", value=tiny_text_checkpoint)])
        builtin = {"use_sim_time", "start_type_description_service"}  # rclpy declares these itself
        declared = {n: node.describe_parameter(n).description for n in node._parameters if n not in builtin}
        assert set(declared) == {p.name for p in PARAMS}
        assert all(declared.values())
        constraints = {n: node.describe_parameter(n).additional_constraints for n in declared}
        assert constraints["captioner"] == "one of: none, cue, qwen" and constraints["frames_per_window"] == ">= 1"
        assert constraints["emotion_topic"] == "a valid topic name" and constraints["model_dir"] == ""
        assert not parameter_errors({p.name: p.default for p in PARAMS})  # every default is allowed
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)

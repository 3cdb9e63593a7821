"""Static checks of what a robot integrator wires up: launch file, params YAML, README table."""
import ast
import re
import time
from pathlib import Path

import pytest
import yaml

from ddvlm_ros.params import PARAMS, parameter_errors

REPO = Path(__file__).resolve().parents[1]


LAUNCH_FILE = REPO / "launch" / "emotion.launch.py"


def launch_calls():
    tree = ast.parse(LAUNCH_FILE.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]


def test_launch_file_starts_the_lifecycle_node_with_params_and_remaps():
    calls = launch_calls()
    node = next(c for c in calls if c.func.id == "LifecycleNode")
    kw = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(kw["package"]) == "ddvlm_ros"
    assert ast.literal_eval(kw["name"]) == "ddvlm_emotion"
    executable = ast.literal_eval(kw["executable"])
    assert f'"{executable} = ddvlm_ros.emotion_node:main"' in (REPO / "setup.py").read_text()
    topic_args = topic_arguments()
    defaults = {p.name: p.default for p in PARAMS}
    topics = [p.name for p in PARAMS if p.topic]  # every topic parameter, robot_speech_topic too
    assert len(topics) == 9
    assert {remapped for remapped, *_ in topic_args} == {defaults[k] for k in topics}
    assert {arg for _, arg, *_ in topic_args} == set(topics)  # topics are remapped, never set as parameters
    assert ast.unparse(kw["parameters"]) == "[LaunchConfiguration('params_file'), given]"  # given ones win
    declared = [c for c in calls if c.func.id == "DeclareLaunchArgument"]
    assert {c.args[0].value for c in declared if c.args and isinstance(c.args[0], ast.Constant)} == {
        "params_file", "namespace", "log_level", "use_sim_time", "respawn", "respawn_delay"}  # the others:
    #                                                                   TOPIC_ARGUMENTS, launch_arguments()
    assert ast.unparse(kw["ros_arguments"]) == "['--log-level', LaunchConfiguration('log_level')]"
    sim_time = next(c for c in declared if c.args and getattr(c.args[0], "value", "") == "use_sim_time")
    assert ast.literal_eval(next(k.value for k in sim_time.keywords if k.arg == "choices")) == ["", "true", "false"]
    source = LAUNCH_FILE.read_text()
    assert 'given["use_sim_time"] = sim_time == "true"' in source  # a bool, and only when given
    assert all(any(k.arg in ("description", None) for k in c.keywords) for c in declared)
    assert "emotion.yaml" in source
    # respawn: off unless asked; both arguments read by launch_respawn (tested below) and passed to the node
    respawn = next(c for c in declared if c.args and getattr(c.args[0], "value", "") == "respawn")
    assert ast.literal_eval(next(k.value for k in respawn.keywords if k.arg == "default_value")) == "false"
    assert (ast.unparse(kw["respawn"]), ast.unparse(kw["respawn_delay"])) == ("respawn", "respawn_delay")
    read = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Assign)
                and ast.unparse(n.targets[0]) == "(respawn, respawn_delay)")
    assert ast.unparse(read.value) == ("launch_respawn(LaunchConfiguration('respawn').perform(context), "
                                       "LaunchConfiguration('respawn_delay').perform(context))")


def test_the_respawn_launch_arguments_are_read_as_a_bool_and_seconds_and_bad_ones_are_named():
    from ddvlm_ros.params import RESPAWN_DELAY_S, launch_respawn

    assert launch_respawn("false", str(RESPAWN_DELAY_S)) == (False, RESPAWN_DELAY_S)  # the launch file's defaults
    assert launch_respawn("true", "0.5") == (True, 0.5)
    assert launch_respawn("true", "") == (True, RESPAWN_DELAY_S)
    for respawn, delay, named in (("yes", "1", "respawn:"), ("True", "1", "respawn:"),
                                  ("true", "soon", "respawn_delay"), ("true", "-1", "respawn_delay"),
                                  ("true", "inf", "respawn_delay"), ("true", "nan", "respawn_delay")):
        with pytest.raises(ValueError, match=f"launch argument {named}"):
            launch_respawn(respawn, delay)


def test_every_other_parameter_is_a_launch_argument_that_only_overrides_when_given():
    from ddvlm_ros.params import launch_arguments, launch_overrides

    args = {a["name"]: a for a in launch_arguments()}
    assert set(args) == {p.name for p in PARAMS if not p.topic}
    assert all(a["description"] and (a["choices"] is None or a["default_value"] in a["choices"]) for a in args.values())
    import torch._inductor

    from ddvlm_core import model
    from ddvlm_core.quantization import KERNELS
    from ddvlm_ros.params import COMPILE_MODES, WOQ_KERNELS

    assert WOQ_KERNELS == KERNELS
    assert COMPILE_MODES == model.COMPILE_MODES
    assert set(model.INDUCTOR_MODES) <= set(torch._inductor.list_mode_options())
    assert set(COMPILE_MODES) - set(model.INDUCTOR_MODES) == {"cudagraphs"} <= set(torch._dynamo.list_backends())
    assert args["captioner"]["choices"] == ["", "none", "cue", "qwen"] and args["autostart"]["default_value"] == "true"
    assert args["quantized"]["default_value"] == "" and args["quantized"]["choices"] == ["", "true", "false"]
    given = launch_overrides({"quantized": "true", "cpu_threads": "4", "frame_buffer_s": "5", "model_dir": "2024",
                              "device": "", "captioner": ""})
    assert given == {"quantized": True, "cpu_threads": 4, "frame_buffer_s": 5.0, "model_dir": "2024"}
    assert type(given["frame_buffer_s"]) is float
    with pytest.raises(ValueError) as e:
        launch_overrides({"quantized": "maybe", "frames_per_window": "0", "woq_kernel": "turbo"})
    for name in ("quantized", "frames_per_window", "woq_kernel"):
        assert f"'{name}'" in str(e.value)


def test_params_yaml_declares_exactly_the_node_parameters_with_their_defaults():
    doc = yaml.safe_load((REPO / "config" / "emotion.yaml").read_text())
    params = doc["/**/ddvlm_emotion"]["ros__parameters"]
    assert params == {p.name: p.default for p in PARAMS}


def test_readme_parameter_table_matches_the_node():
    readme = (REPO / "README.md").read_text()
    rows = {name: rest for name, *rest in re.findall(r"^\| `(\w+)` \| `([^`]*)` \| ([\w ]+) \|", readme, re.M)}
    assert set(rows) == {p.name for p in PARAMS}
    when = {"configure": "configure", "activate": "activate", "now": "at once", "start": "start"}
    for p in PARAMS:
        shown = str(p.default).lower() if isinstance(p.default, bool) else str(p.default)
        assert rows[p.name] == [shown, when[p.applies]], p.name


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
        assert declared == {p.name: p.described() for p in PARAMS}
        assert declared["idle_timeout_s"].endswith("[a new value takes effect at once]")
        assert declared["model_dir"].endswith("[a new value takes effect at the next configure]")
        constraints = {n: node.describe_parameter(n).additional_constraints for n in declared}
        assert constraints["captioner"] == "one of: none, cue, qwen" and constraints["frames_per_window"] == ">= 1"
        assert constraints["emotion_topic"] == "a valid topic name" and constraints["model_dir"] == ""
        assert not parameter_errors({p.name: p.default for p in PARAMS})  # every default is allowed
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def topic_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text())
    return next(ast.literal_eval(n.value) for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TOPIC_ARGUMENTS")


def test_a_topic_launch_argument_set_to_nothing_turns_that_input_off(tiny_visual_checkpoint):
    """As the launch file builds the node: an empty remapping would stop it from starting (rcl refuses it), so ''
    turns the input off through its parameter. compressed_image_topic is off unless given: subscribing to a
    camera's compressed twin of the raw stream gets every frame twice and makes the camera JPEG-encode them."""
    import rclpy
    from rclpy.parameter import Parameter

    from ddvlm_ros.emotion_node import EmotionNode
    from ddvlm_ros.params import launch_topics

    args = topic_arguments()
    defaults = {arg: default for _, arg, default, _ in args}
    assert defaults["compressed_image_topic"] == "" and defaults["image_topic"] == "camera/image_raw"
    remappings, off = launch_topics(args, defaults | {"utterance_topic": "", "image_topic": "/cam/raw"})
    assert off == {"utterance_topic": "", "compressed_image_topic": ""}
    ctx = rclpy.Context()
    with pytest.raises(Exception, match="remap"):  # what the launch file passed before for ''
        rclpy.init(context=ctx, args=["--ros-args", "-r", "image/compressed:="])
    rules = [a for name, target in remappings for a in ("-r", f"{name}:={target}")]
    rclpy.init(context=ctx, args=["--ros-args", *rules])
    try:
        node = EmotionNode(context=ctx, parameter_overrides=[Parameter("model_dir", value=tiny_visual_checkpoint),
                                                             Parameter("captioner", value="cue")]
                           + [Parameter(name, value=value) for name, value in off.items()])
        node.trigger_configure()
        node.trigger_activate()
        subscribed = sorted(s.topic_name for s in node._subs)
        assert subscribed == ["/cam/raw", "/robot_speaking", "/robot_speech", "/transcript", "/voice_activity",
                              "/whisper/transcription"]
        node.trigger_deactivate()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_the_launch_files_topics_go_under_its_namespace_so_that_two_robots_stay_apart(harness, tiny_visual_checkpoint):
    """As the launch file builds the node, with its default topics, in no namespace and in namespace:=robot1 and
    robot2 side by side (one node per robot on one network): each reads and answers under its own namespace, and an
    ASR of robot1 gets answers from robot1's node alone. Before, the defaults were absolute (/transcript, ...,
    /emotion): every robot's node read every robot's transcripts and answered on the one /emotion. A topic given
    with a leading '/' is still taken as it is."""
    from std_msgs.msg import String

    from ddvlm_ros.params import launch_topics

    args = topic_arguments()
    defaults = {arg: default for _, arg, default, _ in args}
    given = {"/": {}, "/robot1": {}, "/robot2": {"transcript_topic": "/asr/text"}}  # robot2's ASR: one absolute name
    robots = {}
    for ns, topics in given.items():
        remappings, off = launch_topics(args, defaults | topics)
        rules = [a for name, target in remappings for a in ("-r", f"{name}:={target}")]
        robots[ns] = harness(model_dir=tiny_visual_checkpoint, captioner="cue", ros_args=("-r", f"__ns:={ns}", *rules),
                             **off).start()
    for ns, h in robots.items():
        under = ns.rstrip("/")
        transcript = "/asr/text" if ns == "/robot2" else f"{under}/transcript"
        assert sorted(s.topic_name for s in h.node._subs) == sorted([transcript] + [
            f"{under}/{t}" for t in ("camera/image_raw", "robot_speaking", "robot_speech", "utterance",
                                     "voice_activity", "whisper/transcription")])
        assert h.node._pub.topic_name == f"{under}/emotion"
    robot1 = robots["/robot1"]
    lines = robot1.add_echo()  # ddvlm-emotion-echo --ros-args -r __ns:=/robot1 (the README's way to check it)
    robot1.publish(String, "/robot1/transcript", String(data="Ross: I got the job!"))
    assert len(robot1.wait_for(1)) == 1
    time.sleep(1.0)  # time for a stray answer to reach the other robots' behaviour nodes
    assert robots["/"].received == [] and robots["/robot2"].received == []
    assert len(lines) == 1 and lines[0].startswith("default/") and " Ross <s1> " in lines[0]


def test_every_launch_command_the_docs_give_uses_launch_arguments_that_exist_with_values_they_take():
    """Each `ros2 launch ddvlm_ros emotion.launch.py name:=value ...` of the README (and the launch file's own
    docstring), as an integrator copies it: every name is a launch argument the file declares, and every value one
    it takes (ros2 launch refuses an unknown choice; the node's parameters are typed and checked as the launch file
    does, with launch_overrides; respawn_delay with launch_respawn)."""
    from ddvlm_ros.params import launch_arguments, launch_overrides, launch_respawn

    declared = {}  # launch argument -> its choices (None: any value)
    for c in launch_calls():
        if c.func.id == "DeclareLaunchArgument" and c.args and isinstance(c.args[0], ast.Constant):
            choices = next((k.value for k in c.keywords if k.arg == "choices"), None)
            declared[c.args[0].value] = ast.literal_eval(choices) if choices is not None else None
    topics = {arg for _, arg, *_ in topic_arguments()}
    parameters = {a["name"] for a in launch_arguments()}
    assert set(declared) & (topics | parameters) == set()
    docs = (REPO / "README.md").read_text() + ast.get_docstring(ast.parse(LAUNCH_FILE.read_text()))
    commands = [line.split("#")[0] for line in docs.splitlines() if "ros2 launch ddvlm_ros emotion.launch.py" in line]
    given = [(name, value) for line in commands for name, value in re.findall(r"(\w+):=(\S*)", line)]
    assert len(commands) >= 8 and {"namespace", "transcript_topic", "quantized", "respawn"} <= {n for n, _ in given}
    for name, value in given:
        assert name in declared or name in topics or name in parameters, f"{name}:= is no launch argument"
        if name in parameters:
            launch_overrides({name: value})  # ValueError for a value the parameter does not take
        elif name == "respawn_delay":
            launch_respawn("true", value)
        elif declared.get(name) is not None:
            assert value in declared[name], f"{name}:={value} is none of {declared[name]}"


def node_reads(params_file: Path, namespace: str, name: str = "ddvlm_emotion") -> tuple[str, bool]:
    """What rcl gives a real node in ``namespace`` from ``params_file``: its fully qualified name, and whether the
    file's parameter ``foo`` reached it."""
    import rclpy
    from rclpy.node import Node

    ctx = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(params_file), "-r", f"__ns:={namespace or '/'}"], context=ctx)
    try:
        node = Node(name, context=ctx, allow_undeclared_parameters=True,
                    automatically_declare_parameters_from_overrides=True)
        fqn, read = node.get_fully_qualified_name(), node.has_parameter("foo")
        node.destroy_node()
        return fqn, read
    finally:
        rclpy.shutdown(context=ctx)


@pytest.mark.parametrize("key", ["/**", "/**/ddvlm_emotion", "ddvlm_emotion", "/ddvlm_emotion", "/*/ddvlm_emotion",
                                 "robot1/ddvlm_emotion", "/**/robot1/**", "/**/other", "/robot1:\n  ddvlm_emotion"])
def test_which_params_file_keys_reach_a_node_is_what_rcl_does(tmp_path, key):
    """ddvlm_ros.params.unapplied_params_files against rcl itself: a node in no namespace, in one and in two, and a
    key in each of rcl's forms (wildcards, no leading '/', namespaces nested as YAML keys)."""
    from ddvlm_ros.params import unapplied_params_files

    f = tmp_path / "params.yaml"
    indent = "  " * (key.count("\n") + 1)
    f.write_text(f"{key}:\n{indent}ros__parameters:\n{indent}  foo: 7\n")
    for namespace in ("", "/robot1", "/a/b"):
        fqn, read = node_reads(f, namespace)
        why = unapplied_params_files([str(f)], fqn)
        assert (why == []) == read, (key, fqn, why)
        if not read:
            keyed = key.replace(":\n  ", "/").lstrip("/")
            assert why == [f"{f}: nothing in it applies to this node, {fqn}: its parameters are for /{keyed}; key "
                           f"them '/**/ddvlm_emotion:' (this node's name in any namespace) or '{fqn}:'"]


def test_params_files_are_the_ros_arguments_files_only(tmp_path):
    from ddvlm_ros.params import params_files, unapplied_params_files

    argv = ["ddvlm-emotion", "--params-file", "not-ros.yaml", "--ros-args", "-r", "__ns:=/r", "--params-file", "a.yaml",
            "-p", "x:=1", "--", "--params-file", "app.yaml", "--ros-args", "--params-file", "b.yaml"]
    assert params_files(argv) == ["a.yaml", "b.yaml"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert unapplied_params_files([str(empty), str(tmp_path / "gone.yaml")], "/ddvlm_emotion") == [
        f"{empty}: nothing in it applies to this node, /ddvlm_emotion: it has no 'ros__parameters'; key them "
        "'/**/ddvlm_emotion:' (this node's name in any namespace) or '/ddvlm_emotion:'"]


def test_the_shipped_params_file_reaches_the_node_in_any_namespace_and_one_keyed_by_name_says_it_does_not(tmp_path):
    """config/emotion.yaml, with one value changed as an integrator would, configures the node launched with
    namespace:=robot1; the same file keyed 'ddvlm_emotion:' (as it was) gives that node nothing, which rcl does not
    say: the node warns, and its status says so. Two nodes' statuses differ in name (diagnostic_aggregator and
    rqt_robot_monitor key them by name)."""
    import rclpy

    from ddvlm_ros.emotion_node import DIAGNOSTIC_NAME, EmotionNode

    shipped = (REPO / "config" / "emotion.yaml").read_text()
    assert "\n    idle_timeout_s: 120.0\n" in shipped
    mine = tmp_path / "mine.yaml"
    mine.write_text(shipped.replace("\n    idle_timeout_s: 120.0\n", "\n    idle_timeout_s: 60.0\n"))
    by_name = tmp_path / "by_name.yaml"
    by_name.write_text(mine.read_text().replace("\n/**/ddvlm_emotion:\n", "\nddvlm_emotion:\n"))
    seen = {}
    for f, namespace in [(mine, ""), (mine, "/robot1"), (mine, "/a/b"), (by_name, ""), (by_name, "/robot1")]:
        args = ["ddvlm-emotion", "--ros-args", "--params-file", str(f), "-r", f"__ns:={namespace or '/'}"]
        ctx = rclpy.Context()
        rclpy.init(args=args, context=ctx)
        try:
            node = EmotionNode(context=ctx)
            unapplied = node.check_params_files(args)
            status = node.diagnostic_status()
            seen[f.name, namespace] = (node.p("idle_timeout_s"), status.name, status.hardware_id, status.message)
            if unapplied:
                assert {kv.key: kv.value for kv in status.values}["params_files_unapplied"] == unapplied[0]
                assert unapplied[0].startswith(f"{by_name}: nothing in it applies to this node, /robot1/ddvlm_emotion")
            node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
    inactive = "inactive"  # not configured: the status a node with nothing wrong has before configure
    not_applied = "params file not applied (see params_files_unapplied)"
    robot1, ab = "/robot1/ddvlm_emotion", "/a/b/ddvlm_emotion"
    assert seen == {
        ("mine.yaml", ""): (60.0, DIAGNOSTIC_NAME, "/ddvlm_emotion", inactive),
        ("mine.yaml", "/robot1"): (60.0, f"{DIAGNOSTIC_NAME}: {robot1}", robot1, inactive),
        ("mine.yaml", "/a/b"): (60.0, f"{DIAGNOSTIC_NAME}: {ab}", ab, inactive),
        ("by_name.yaml", ""): (60.0, DIAGNOSTIC_NAME, "/ddvlm_emotion", inactive),
        ("by_name.yaml", "/robot1"): (120.0, f"{DIAGNOSTIC_NAME}: {robot1}", robot1, not_applied)}


def test_every_warning_and_error_the_status_gives_has_a_troubleshooting_row():
    """Each message the node's status can say (a WARN or ERROR in ddvlm_ros/emotion_node.py) is a row of the
    README's troubleshooting table, which says what to do about it."""
    tree = ast.parse((REPO / "ddvlm_ros" / "emotion_node.py").read_text())
    said = set()
    for t in ast.walk(tree):
        if (isinstance(t, ast.Tuple) and len(t.elts) == 2 and isinstance(t.elts[0], ast.Attribute)
                and t.elts[0].attr in ("WARN", "ERROR")):
            text = t.elts[1]
            parts = text.values if isinstance(text, ast.JoinedStr) else [text]
            lead = ""
            for part in parts:  # the words before the first value filled in
                if not isinstance(part, ast.Constant):
                    break
                lead += part.value
            said.add(re.sub(r" \(see \w+\)$", "", lead).strip())
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("**Troubleshooting**"):readme.index("\nParameters (")]
    rows = re.findall(r"^\| (?:ERROR )?`([^`]+)`", table, re.M)
    assert len(said) >= 15 and "params file not applied" in said and "configure failed:" in said
    assert [s for s in sorted(said) if not any(row.startswith(s) for row in rows)] == []

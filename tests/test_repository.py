"""pysonic.repository: Triton's layout, config.pbtxt, auto-complete, versions, validation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInstanceGroup

import pysonic.repository as repository
from pysonic.errors import ModelConfigError, NotFoundError
from pysonic.repository import (
    DEFAULT_MAX_BATCH_SIZE,
    ModelRepository,
    config_to_text,
    load_model_config,
    model_file_path,
    normalize_config,
    parse_model_config,
    select_versions,
    validate_config,
)

if TYPE_CHECKING:
    from pathlib import Path

Spec = tuple[str, int, list]  # (name, ONNX elem type, shape with ints or dim_param strings)
XY_IN: list[Spec] = [("x", TensorProto.FLOAT, ["N", 3])]
XY_OUT: list[Spec] = [("y", TensorProto.FLOAT, ["N", 3])]


def write_onnx(
    path: Path,
    inputs: list[Spec] = XY_IN,
    outputs: list[Spec] = XY_OUT,
    *,
    initializer_inputs: bool = False,
) -> Path:
    """A small opset-17 model: Identity from each input to the output at the same position."""
    nodes = [
        helper.make_node("Identity", [i[0]], [o[0]]) for i, o in zip(inputs, outputs, strict=False)
    ]
    graph_inputs = [helper.make_tensor_value_info(*spec) for spec in inputs]
    initializers = []
    if initializer_inputs:
        # ONNX IR < 4 lists initializers among the graph inputs; they are not served inputs.
        weight = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
        initializers.append(weight)
        graph_inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]))
    graph = helper.make_graph(
        nodes,
        "g",
        graph_inputs,
        [helper.make_tensor_value_info(*spec) for spec in outputs],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def make_model_dir(
    root: Path,
    name: str = "m",
    config: str | None = None,
    versions: tuple[int, ...] = (1,),
    **onnx_kwargs,
) -> Path:
    model_dir = root / name
    model_dir.mkdir(parents=True)
    for v in versions:
        write_onnx(model_dir / str(v) / "model.onnx", **onnx_kwargs)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    return model_dir


FULL_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def check(text: str) -> ModelConfig:
    """Parse, normalize and validate a config as load_model_config would (no disk)."""
    config = parse_model_config(text, "m/config.pbtxt")
    if not config.name:
        config.name = "m"
    normalize_config(config)
    validate_config(config, "m/config.pbtxt")
    return config


# --- API and parsing ------------------------------------------------------------------------


def test_public_api():
    assert repository.__all__ == sorted(repository.__all__)
    assert set(repository.__all__) == {
        "CONFIG_FILENAME",
        "DEFAULT_MAX_BATCH_SIZE",
        "DEFAULT_MODEL_FILENAMES",
        "ModelDefinition",
        "ModelRepository",
        "config_to_text",
        "list_versions",
        "load_model_config",
        "model_file_path",
        "normalize_config",
        "parse_model_config",
        "select_versions",
        "validate_config",
    }


def test_parse_and_text_round_trip():
    config = parse_model_config(FULL_CONFIG + 'name: "m"\ndynamic_batching { priority_levels: 2 }')
    assert config.max_batch_size == 8
    assert config.input[0].data_type == DataType.TYPE_FP32
    assert list(config.output[0].dims) == [3]
    assert parse_model_config(config_to_text(config)) == config


def test_syntax_error_names_file_line_and_column(tmp_path):
    make_model_dir(tmp_path, config='name: "m"\nbackend: "onnxruntime"\nmax_batch_size: eight\n')
    with pytest.raises(ModelConfigError) as info:
        load_model_config(tmp_path / "m")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / 'config.pbtxt'}:3:17: syntax error")
    assert "eight" in message


def test_unknown_field_is_an_error():
    with pytest.raises(ModelConfigError, match=r"cfg:2:1: .*max_batch"):
        parse_model_config('name: "m"\nmax_batch: 4', "cfg")


# --- auto-complete --------------------------------------------------------------------------


def test_autocomplete_without_config(tmp_path):
    make_model_dir(
        tmp_path,
        inputs=[("pts", TensorProto.FLOAT, ["N", "P", 2]), ("mask", TensorProto.BOOL, ["N", 7])],
        outputs=[("score", TensorProto.FLOAT, ["N", 5]), ("id", TensorProto.INT64, [-1, 4])],
    )
    config = load_model_config(tmp_path / "m")
    assert config.name == "m"
    assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE == 4
    assert [(i.name, DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("pts", "TYPE_FP32", [-1, 2]),
        ("mask", "TYPE_BOOL", [7]),
    ]
    assert [(o.name, DataType.Name(o.data_type), list(o.dims)) for o in config.output] == [
        ("score", "TYPE_FP32", [5]),
        ("id", "TYPE_INT64", [4]),
    ]
    # Like Triton: a batching model gets a dynamic batcher, preferred size max_batch_size.
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1
    [group] = config.instance_group
    assert (group.name, group.kind, group.count) == ("m", ModelInstanceGroup.KIND_CPU, 1)


def test_autocomplete_fixed_first_axis_does_not_batch(tmp_path):
    make_model_dir(
        tmp_path,
        inputs=[("x", TensorProto.FLOAT, [1, 3])],
        outputs=[("y", TensorProto.FLOAT, ["N", 3])],
    )
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 3]
    assert list(config.output[0].dims) == [-1, 3]
    assert not config.HasField("dynamic_batching")


def test_autocomplete_scalar_per_batch_item_uses_empty_reshape(tmp_path):
    make_model_dir(
        tmp_path,
        inputs=[("x", TensorProto.FLOAT, ["N"])],
        outputs=[("s", TensorProto.STRING, ["N"])],
    )
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 4
    for io in (config.input[0], config.output[0]):
        assert list(io.dims) == [1]
        assert io.HasField("reshape")
        assert list(io.reshape.shape) == []
    assert config.output[0].data_type == DataType.TYPE_STRING


def test_autocomplete_reads_the_highest_version(tmp_path):
    model_dir = make_model_dir(tmp_path, versions=(2,))
    write_onnx(model_dir / "10" / "model.onnx", inputs=[("x10", TensorProto.FLOAT, ["N", 3])])
    config = load_model_config(model_dir)
    assert [i.name for i in config.input] == ["x10"]  # 10 > 2, though "10" < "2" as text


def test_platform_alone_gives_the_backend(tmp_path):
    config_text = FULL_CONFIG.replace('backend: "onnxruntime"', 'platform: "onnxruntime_onnx"')
    make_model_dir(tmp_path, config=config_text)
    assert load_model_config(tmp_path / "m").backend == "onnxruntime"


def test_unknown_default_model_filename_needs_a_backend(tmp_path):
    config_text = FULL_CONFIG.replace('backend: "onnxruntime"', 'default_model_filename: "a.bin"')
    make_model_dir(tmp_path, config=config_text)
    with pytest.raises(ModelConfigError, match=r"'a\.bin' does not tell the backend"):
        load_model_config(tmp_path / "m")


def test_autocomplete_skips_initializers_listed_as_inputs(tmp_path):
    make_model_dir(tmp_path, initializer_inputs=True)
    config = load_model_config(tmp_path / "m")
    assert [i.name for i in config.input] == ["x"]


def test_autocomplete_partial_config_keeps_what_the_user_wrote(tmp_path):
    make_model_dir(
        tmp_path,
        config="""
            max_batch_size: 16
            input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]
            instance_group [ { count: 3 kind: KIND_CPU } ]
        """,
    )
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [-1]  # the user's dims, not the graph's [3]
    assert [(o.name, list(o.dims)) for o in config.output] == [("y", [3])]
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert [(g.name, g.count) for g in config.instance_group] == [("m_0", 3)]


def test_autocomplete_keeps_max_batch_size_zero_when_user_dims_include_batch(tmp_path):
    make_model_dir(tmp_path, config='input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]')
    config = load_model_config(tmp_path / "m")
    assert config.max_batch_size == 0
    assert list(config.output[0].dims) == [-1, 3]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            'input [ { name: "nope" data_type: TYPE_FP32 dims: [ 3 ] } ]',
            r"input 'nope' is not in the ONNX graph \(graph inputs: x\)",
        ),
        (
            'input [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] } ]',
            "input 'x' is TYPE_INT32 but the graph has TYPE_FP32",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            r"input 'x' has dims \[4\] but the graph shape is \[-1, 3\]",
        ),
    ],
)
def test_autocomplete_checks_user_tensors_against_the_graph(tmp_path, config, match):
    make_model_dir(tmp_path, config=config)
    with pytest.raises(ModelConfigError, match=match):
        load_model_config(tmp_path / "m")


def test_autocomplete_rejects_max_batch_size_for_a_model_that_cannot_batch(tmp_path):
    make_model_dir(
        tmp_path,
        config="max_batch_size: 8",
        inputs=[("x", TensorProto.FLOAT, [2, 3])],
        outputs=[("y", TensorProto.FLOAT, [2, 3])],
    )
    with pytest.raises(ModelConfigError, match=r"cannot batch: the first axis of 'x'"):
        load_model_config(tmp_path / "m")


def test_autocomplete_unsupported_element_type(tmp_path):
    make_model_dir(tmp_path, inputs=[("c", TensorProto.COMPLEX64, ["N", 3])])
    with pytest.raises(ModelConfigError, match="'c' has ONNX element type COMPLEX64"):
        load_model_config(tmp_path / "m")


def test_autocomplete_unreadable_onnx_names_the_file(tmp_path):
    model_file = tmp_path / "m" / "1" / "model.onnx"
    model_file.parent.mkdir(parents=True)
    model_file.write_bytes(b"\xff\x00 definitely not protobuf \xff" * 8)
    with pytest.raises(ModelConfigError, match="cannot read the ONNX model") as info:
        load_model_config(tmp_path / "m")
    assert str(model_file) in str(info.value)


def test_full_config_does_not_read_the_graph(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"not an onnx file")
    (model_dir / "config.pbtxt").write_text(FULL_CONFIG)
    config = load_model_config(model_dir)
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")  # only auto-complete adds one


# --- strict mode ----------------------------------------------------------------------------


def test_strict_requires_config_file(tmp_path):
    make_model_dir(tmp_path)
    with pytest.raises(ModelConfigError, match=r"config\.pbtxt: not found; strict"):
        load_model_config(tmp_path / "m", strict=True)


def test_strict_requires_inputs_and_outputs(tmp_path):
    make_model_dir(tmp_path, config='backend: "onnxruntime"\nmax_batch_size: 4')
    with pytest.raises(ModelConfigError, match=r"lists no input and output, and auto-complete"):
        load_model_config(tmp_path / "m", strict=True)


def test_strict_still_fills_name_platform_and_defaults(tmp_path):
    make_model_dir(tmp_path, config=FULL_CONFIG)
    config = load_model_config(tmp_path / "m", strict=True)
    assert (config.name, config.platform) == ("m", "onnxruntime_onnx")
    assert len(config.instance_group) == 1


# --- backend fields and model files ---------------------------------------------------------


def test_name_mismatch_is_an_error(tmp_path):
    make_model_dir(tmp_path, config='name: "other"\n' + FULL_CONFIG)
    with pytest.raises(ModelConfigError, match="name 'other' differs from the model directory 'm'"):
        load_model_config(tmp_path / "m")


def test_platform_backend_mismatch_is_an_error(tmp_path):
    make_model_dir(tmp_path, config='platform: "pytorch_libtorch"\n' + FULL_CONFIG)
    with pytest.raises(ModelConfigError, match="belongs to backend 'pytorch'"):
        load_model_config(tmp_path / "m")


def test_backend_detected_from_model_file(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "2").mkdir(parents=True)
    (model_dir / "2" / "model.pt").write_bytes(b"torchscript")
    io = FULL_CONFIG.replace('backend: "onnxruntime"', "")
    (model_dir / "config.pbtxt").write_text(io)
    config = load_model_config(model_dir)
    assert (config.backend, config.platform) == ("pytorch", "pytorch_libtorch")
    assert model_file_path(config, model_dir / "2") == model_dir / "2" / "model.pt"


def test_python_model_without_auto_complete_config_cannot_autocomplete(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    with pytest.raises(ModelConfigError, match="auto-complete reads only ONNX graphs and Python"):
        load_model_config(model_dir)


def test_default_model_filename(tmp_path):
    model_dir = tmp_path / "m"
    write_onnx(model_dir / "1" / "net.onnx")
    (model_dir / "config.pbtxt").write_text(
        'backend: "onnxruntime"\ndefault_model_filename: "net.onnx"'
    )
    config = load_model_config(model_dir)  # auto-complete read net.onnx
    assert [i.name for i in config.input] == ["x"]
    definition = ModelRepository(tmp_path).load("m")
    assert (
        model_file_path(definition.config, definition.versions[1]) == model_dir / "1" / "net.onnx"
    )


def test_load_reports_a_missing_model_file(tmp_path):
    model_dir = make_model_dir(tmp_path, config=FULL_CONFIG + "version_policy { all {} }")
    (model_dir / "2").mkdir()
    with pytest.raises(ModelConfigError, match=r"model\.onnx: not found \(model 'm' version 2\)"):
        ModelRepository(tmp_path).load("m")


@pytest.mark.parametrize(
    ("backend", "filename"),
    [("onnxruntime", "model.onnx"), ("pytorch", "model.pt"), ("python", "model.py")],
)
def test_model_file_path_defaults(tmp_path, backend, filename):
    config = ModelConfig(name="m", backend=backend)
    assert model_file_path(config, tmp_path / "1") == tmp_path / "1" / filename


def test_model_file_path_unknown_backend_needs_filename(tmp_path):
    with pytest.raises(ModelConfigError, match="default_model_filename"):
        model_file_path(ModelConfig(name="m", backend="custom"), tmp_path)


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [10]),
        ("version_policy { latest { num_versions: 2 } }", [3, 10]),
        ("version_policy { latest { num_versions: 9 } }", [1, 3, 10]),
        ("version_policy { all {} }", [1, 3, 10]),
        ("version_policy { specific { versions: [ 3, 1 ] } }", [1, 3]),
    ],
)
def test_version_policies(tmp_path, policy, expected):
    model_dir = make_model_dir(tmp_path, config=FULL_CONFIG + policy, versions=(1, 3, 10))
    for ignored in ("0", "01", "latest", ".hidden"):
        (model_dir / ignored).mkdir()
    (model_dir / "7").write_text("a file, not a version directory")
    config = load_model_config(model_dir)
    assert select_versions(config, model_dir) == expected
    definition = ModelRepository(tmp_path).load("m")
    assert definition.versions == {v: model_dir / str(v) for v in expected}


def test_missing_specific_version_is_named(tmp_path):
    policy = "version_policy { specific { versions: [ 1, 2, 5 ] } }"
    model_dir = make_model_dir(tmp_path, config=FULL_CONFIG + policy, versions=(1,))
    with pytest.raises(ModelConfigError, match=r"version\(s\) 2, 5, not found .*available: 1"):
        select_versions(load_model_config(model_dir), model_dir)


def test_no_version_directory(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text(FULL_CONFIG)
    with pytest.raises(ModelConfigError, match="no version to serve"):
        ModelRepository(tmp_path).load("m")


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            "dynamic_batching { preferred_batch_size: [ 4, 16 ] }",
            r"preferred_batch_size 16 must be in 1\.\.max_batch_size \(8\)",
        ),
        ("dynamic_batching { preferred_batch_size: [ 0 ] }", "preferred_batch_size 0"),
        (
            'input [ { name: "z" data_type: TYPE_FP32 dims: [ 0 ] } ]',
            r"input 'z' has dims \[0\]: each must be >= 1, or -1",
        ),
        (
            'input [ { name: "z" data_type: TYPE_FP32 dims: [ 2, -2 ] } ]',
            r"input 'z' has dims \[2, -2\]",
        ),
        ('input [ { name: "z" data_type: TYPE_FP32 } ]', "input 'z' must specify 'dims'"),
        ('input [ { name: "z" dims: [ 1 ] } ]', "input 'z' must specify 'data_type'"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]', "duplicate input name 'x'"),
        (
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]',
            "duplicate output name 'y'",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
            r"default_priority_level 3 must be in 1\.\.priority_levels \(2\)",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 0 }",
            "default_priority_level 0",
        ),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "priority_queue_policy { key: 5 value: { max_queue_size: 3 } } }",
            "priority_queue_policy key 5 must be in 1..priority_levels",
        ),
        ("dynamic_batching { default_priority_level: 1 }", "need priority_levels > 0"),
        (
            "dynamic_batching { priority_levels: 2 default_priority_level: 1 "
            "preserve_ordering: true }",
            "preserve_ordering allows only one priority level",
        ),
        ("instance_group [ { count: -2 } ]", "count must be >= 1, got -2"),
        ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "KIND_CPU but lists gpus"),
        ("version_policy { latest { } }", "num_versions must be >= 1"),
        ("version_policy { specific { versions: [ 0 ] } }", "versions must be positive"),
    ],
)
def test_validation_errors(change, match):
    with pytest.raises(ModelConfigError, match=match) as info:
        check(FULL_CONFIG + change)
    assert str(info.value).startswith("m/config.pbtxt: ")


def test_negative_max_batch_size():
    with pytest.raises(ModelConfigError, match="'max_batch_size' must be >= 0, got -1"):
        check(FULL_CONFIG.replace("max_batch_size: 8", "max_batch_size: -1"))


def test_dynamic_batching_needs_max_batch_size():
    text = FULL_CONFIG.replace("max_batch_size: 8", "") + "dynamic_batching { }"
    with pytest.raises(ModelConfigError, match="dynamic_batching needs max_batch_size > 0"):
        check(text)


@pytest.mark.parametrize(
    ("dims", "reshape", "ok"),
    [
        ([1], [], True),
        ([2, 6], [12], True),
        ([2, 4, -1, 6], [8, -1, 1, 6], True),
        ([2, 6], [3, 5], False),
        ([2, -1], [2], False),
        ([3], [], False),
    ],
)
def test_reshape_element_counts(dims, reshape, ok):
    text = FULL_CONFIG + (
        f'input [ {{ name: "r" data_type: TYPE_FP32 dims: {dims} '
        f"reshape {{ shape: {reshape} }} }} ]"
    )
    if ok:
        check(text)
    else:
        with pytest.raises(ModelConfigError, match=r"input 'r': dims .* and reshape"):
            check(text)


def test_empty_reshape_needs_batching():
    text = FULL_CONFIG.replace("max_batch_size: 8", "") + (
        'input [ { name: "r" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [] } } ]'
    )
    with pytest.raises(ModelConfigError, match="empty reshape"):
        check(text)


def test_missing_inputs_fail_validation():
    with pytest.raises(ModelConfigError, match="at least one input"):
        check('backend: "onnxruntime"\noutput [ { name: "y" data_type: TYPE_FP32 dims: [1] } ]')


def test_normalize_resolves_instance_groups():
    config = check(FULL_CONFIG + "instance_group [ { kind: KIND_AUTO }, { name: 'g' count: 2 } ]")
    groups = [(g.name, g.kind, g.count) for g in config.instance_group]
    cpu = ModelInstanceGroup.KIND_CPU
    assert groups == [("m_0", cpu, 1), ("g", cpu, 2)]


# --- the repository -------------------------------------------------------------------------


def test_repository_lists_and_loads(tmp_path):
    make_model_dir(tmp_path, "particlenet_lite", config=FULL_CONFIG)
    make_model_dir(tmp_path, "deepmet")
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.md").write_text("not a model")
    repo = ModelRepository(tmp_path)
    assert repo.root == tmp_path
    assert repo.model_names() == ["deepmet", "particlenet_lite"]
    definition = repo.load("deepmet")
    assert definition.name == definition.config.name == "deepmet"
    assert definition.path == tmp_path / "deepmet"
    assert definition.versions == {1: tmp_path / "deepmet" / "1"}


def test_unknown_model_suggests_a_name(tmp_path):
    make_model_dir(tmp_path, "particlenet_lite", config=FULL_CONFIG)
    make_model_dir(tmp_path, "deepmet", config=FULL_CONFIG)
    with pytest.raises(NotFoundError) as info:
        ModelRepository(tmp_path).load("particlenet_lit")
    message = str(info.value)
    assert "available: deepmet, particlenet_lite" in message
    assert "did you mean 'particlenet_lite'?" in message


def test_unknown_model_in_an_empty_repository(tmp_path):
    with pytest.raises(NotFoundError, match="holds no models"):
        ModelRepository(tmp_path).load("m")


def test_path_like_names_are_not_models(tmp_path):
    make_model_dir(tmp_path, config=FULL_CONFIG)
    with pytest.raises(NotFoundError):
        ModelRepository(tmp_path / "m").load("..")


def test_repository_root_must_be_a_directory(tmp_path):
    with pytest.raises(ModelConfigError, match="is not a directory"):
        ModelRepository(tmp_path / "missing")

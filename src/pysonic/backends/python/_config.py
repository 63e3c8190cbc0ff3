"""The model configuration as Python models see it: Triton's JSON form, and auto-complete.

Triton hands ``initialize`` the configuration as a JSON string with proto field names, every
field printed (defaults too) and 64-bit integers as JSON numbers (protobuf's JSON mapping writes
them as strings; Triton converts them back). :func:`config_to_json` produces the same, and
:class:`ModelConfig` is what ``TritonPythonModel.auto_complete_config`` receives and returns.

Example::

    args = {"model_config": config_to_json(config)}
    json.loads(args["model_config"])["input"][0]["dims"]   # [16], not ["16"]
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2

__all__ = ["ModelConfig", "config_from_dict", "config_to_dict", "config_to_json"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def config_to_dict(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    """The config as Triton's JSON object (field names as in config.pbtxt, defaults printed)."""
    try:
        data = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf < 5.26 names the option differently
        data = json_format.MessageToDict(
            config,
            preserving_proto_field_name=True,
            including_default_value_fields=True,  # type: ignore[call-arg]
        )
    _ints(config.DESCRIPTOR, data)
    return data


def config_to_json(config: model_config_pb2.ModelConfig) -> str:
    return json.dumps(config_to_dict(config))


def config_from_dict(data: dict[str, Any]) -> model_config_pb2.ModelConfig:
    return json_format.ParseDict(data, model_config_pb2.ModelConfig())


def _ints(descriptor: Descriptor, data: dict[str, Any]) -> None:
    """64-bit integer fields back to JSON numbers, recursively (Triton's FixInt)."""
    for name, value in data.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        if field.type in _INT64_TYPES:
            data[name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if sub.GetOptions().map_entry:
                value_field = sub.fields_by_name["value"]
                for key, item in value.items():
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        _ints(value_field.message_type, item)
                    elif value_field.type in _INT64_TYPES:
                        value[key] = int(item)
            elif isinstance(value, list):
                for item in value:
                    _ints(sub, item)
            else:
                _ints(sub, value)


class ModelConfig:
    """The config handed to ``auto_complete_config`` (Triton's ``pb_utils.ModelConfig``).

    Only ``max_batch_size``, inputs, outputs, the dynamic batcher and the transaction policy can
    be changed; conflicting with what config.pbtxt says raises ``ValueError``, as in Triton.
    """

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        data = json.loads(model_config) if isinstance(model_config, str) else model_config
        data.setdefault("input", [])
        data.setdefault("output", [])
        data.setdefault("max_batch_size", 0)
        self._model_config = data

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    @property
    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._model_config.get("max_batch_size", 0))
        if current > max_batch_size:
            msg = (
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._name}' specified max_batch_size {max_batch_size}"
            )
            raise ValueError(msg)
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if self._model_config.get(other):
                msg = (
                    f"configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._name}' tries to set "
                    "scheduling_choice as 'dynamic_batching'"
                )
                raise ValueError(msg)
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        label = f"{kind} '{tensor.get('name', '')}' in auto-complete-config function for model"
        extra = [k for k in tensor if k not in allowed]
        if extra:
            msg = f"{label} '{self._name}' contains properties {extra} (allowed: {allowed})"
            raise ValueError(msg)
        for required in ("name", "data_type", "dims"):
            if required not in tensor:
                msg = f"{label} '{self._name}' is missing '{required}' property"
                raise ValueError(msg)
        for current in self._model_config[kind]:
            if current["name"] != tensor["name"]:
                continue
            written = current.get("data_type", "TYPE_INVALID")
            if written not in ("TYPE_INVALID", tensor["data_type"]):
                msg = (
                    f"unable to load model '{self._name}', configuration expects datatype "
                    f"{written} for {kind} '{tensor['name']}', model provides {tensor['data_type']}"
                )
                raise ValueError(msg)
            dims = [int(d) for d in current.get("dims", [])]
            if dims and dims != [int(d) for d in tensor["dims"]]:
                msg = (
                    f"model '{self._name}', tensor '{tensor['name']}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims {dims}"
                )
                raise ValueError(msg)
            current.update(tensor)
            return
        self._model_config[kind].append(dict(tensor))

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        extra = [k for k in transaction_policy_dict if k != "decoupled"]
        if extra:
            msg = f"model transaction property {extra} of model '{self._name}' is not 'decoupled'"
            raise ValueError(msg)
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            policy["decoupled"] = transaction_policy_dict["decoupled"]

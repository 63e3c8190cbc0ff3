"""A drop-in for coffea's ``triton_wrapper`` that runs through the pysonic client.

Same constructor (``model_url``, ``client_args``, ``batch_size``), same ``prepare_awkward``
hook, same call (``wrapper(*args)`` on awkward, dask-awkward or numpy inputs), same
``numpy_call(output_list, input_dict) -> {output: ndarray}`` and input checks; an analysis
switches with one line::

    # from coffea.ml_tools.triton_wrapper import triton_wrapper
    from pysonic.analysis.coffea import triton_wrapper

What differs underneath: coffea sends one blocking request per ``batch_size`` rows, one after
the other, and pads the last one to ``batch_size`` with ``np.resize`` (repeated rows the server
computes and the client throws away). This one sends the last request at its true size and keeps
up to ``max_in_flight`` requests in flight (async), so the server can batch them together; the
outputs come back in row order all the same. The client is pysonic's (balancing, retries) and is
made once per process, not once per unpickled wrapper, so a dask worker reuses its connection.

``client_args`` takes tritonclient's TLS arguments (``ssl``, default True as in coffea;
``root_certificates``, ``private_key``, ``certificate_chain``; ``verbose`` is accepted and
ignored) and pysonic's ``max_in_flight`` (8), ``timeout`` (s), ``allowed_tries``,
``compression``. Only ``triton+grpc://`` URLs: the pysonic client speaks gRPC.

Example::

    class Tagger(triton_wrapper):
        def prepare_awkward(self, jets, constituents):
            inputs = JetTagger().inputs(jets, constituents)
            return [], {"output_list": ["softmax"],
                        "input_dict": {k: ak.from_numpy(v) for k, v in inputs.items()}}

    tagger = Tagger("triton+grpc://127.0.0.1:8001/particlenet_lite/1", {"ssl": False})
    scores = tagger(jets, constituents)["softmax"]
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pysonic._extras import require
from pysonic.analysis._engine import EngineSpec, engine
from pysonic.errors import InvalidArgumentError, UnimplementedError
from pysonic.protocol.datatypes import config_to_wire, to_numpy_dtype

require("coffea")
from coffea.ml_tools.helper import (  # noqa: E402 - after the extra's check
    nonserializable_attribute,
    numpy_call_wrapper,
)
from coffea.nanoevents import PFNanoAODSchema  # noqa: E402

__all__ = ["PysonicNanoSchema", "triton_wrapper"]


class PysonicNanoSchema(PFNanoAODSchema):
    """coffea's PFNano schema for pysonic's NanoAOD-like files (``pysonic events convert``).

    The files hold PF candidates, AK4/AK8 jets and their constituents but no leptons or
    photons, so the cross-references NanoAOD has to those are absent by design, not by mistake:
    no warning for each. Importable on every worker, unlike a class in the user's script.

    Example::

        events = NanoEventsFactory.from_root({path: "Events"},
                                             schemaclass=PysonicNanoSchema).events()
        events.FatJet.constituents.pf              # each jet's PF candidates
    """

    warn_missing_crossrefs = False


_TLS_ARGS = ("root_certificates", "certificate_chain", "private_key")
_PYSONIC_ARGS = ("max_in_flight", "timeout", "allowed_tries", "compression")
_IGNORED_ARGS = ("verbose",)


def _wire_type(data_type: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return config_to_wire(model_config_pb2.DataType.Name(data_type))


class triton_wrapper(nonserializable_attribute, numpy_call_wrapper):
    """coffea's ``triton_wrapper``, through pysonic (see the module docstring)."""

    batch_size_fallback = 10  # as coffea: when the model's config names no batch size

    def __init__(self, model_url: str, client_args: dict | None = None, batch_size: int = -1):
        nonserializable_attribute.__init__(
            self, ["client", "model_metadata", "model_inputs", "model_outputs"]
        )
        try:
            fullprotocol, location = model_url.split("://")
            _, self.protocol = fullprotocol.split("+")
            self.address, self.model, self.version = location.split("/")
        except ValueError:
            msg = f"model_url '{model_url}' is not triton+<protocol>://<address>/<model>/<version>"
            raise InvalidArgumentError(msg) from None
        if self.protocol != "grpc":
            msg = (
                f"protocol '{self.protocol}': pysonic's client speaks gRPC; use "
                f"triton+grpc://<address>/{self.model}/{self.version}"
            )
            raise UnimplementedError(msg)
        self._batch_size = batch_size
        self._client_args = client_args
        self._spec = self._engine_spec(dict(client_args or {}))

    def _engine_spec(self, args: dict[str, Any]) -> EngineSpec:
        known = ("ssl", *_TLS_ARGS, *_PYSONIC_ARGS, *_IGNORED_ARGS)
        unknown = sorted(set(args) - set(known))
        if unknown:
            msg = f"client_args {unknown} are not supported (known: {', '.join(known)})"
            raise InvalidArgumentError(msg)
        tls = None
        if args.get("ssl", True):
            tls = tuple(args.get(k) for k in ("root_certificates", "certificate_chain"))
            tls = (*tls, args.get("private_key"))
        options = {k: args[k] for k in _PYSONIC_ARGS if k in args}
        return EngineSpec(
            model=self.model,
            backend="site",
            model_version=self.version,
            servers=(self.address,),
            tls=tls,
            **options,
        )

    # the lazily created, never pickled attributes (coffea's nonserializable_attribute)
    def _create_client(self) -> Any:
        return engine(self._spec)  # one per process and configuration, shared by copies

    def _create_model_metadata(self) -> dict:
        config = self.client.model_config()
        batch = [-1] if config.max_batch_size > 0 else []

        def tensor(t: Any) -> dict:
            return {
                "name": t.name,
                "datatype": _wire_type(t.data_type),
                "shape": [*batch, *t.dims],
            }

        return {
            "name": config.name,
            "versions": [self.version] if self.version else [],
            "platform": config.platform or config.backend,
            "inputs": [tensor(t) for t in config.input],
            "outputs": [tensor(t) for t in config.output],
        }

    def _create_model_inputs(self) -> dict[str, dict]:
        return {
            x["name"]: {"shape": tuple(int(i) for i in x["shape"]), "datatype": x["datatype"]}
            for x in self.model_metadata["inputs"]
        }

    def _create_model_outputs(self) -> dict[str, dict]:
        return {
            x["name"]: {"shape": tuple(int(i) for i in x["shape"]), "datatype": x["datatype"]}
            for x in self.model_metadata["outputs"]
        }

    @property
    def batch_size(self) -> int:
        """Rows per request: as set, else the model's first preferred batch size, else its
        max_batch_size (coffea's rule)."""
        if self._batch_size < 0:
            config = self.client.model_config()
            preferred = list(config.dynamic_batching.preferred_batch_size)
            if config.HasField("dynamic_batching") and preferred:
                self._batch_size = preferred[0]
            elif config.max_batch_size > 0:
                self._batch_size = config.max_batch_size
            else:
                warnings.warn(
                    f"Batch size not set by model! Setting to default value "
                    f"{self.batch_size_fallback}.",
                    UserWarning,
                    stacklevel=2,
                )
                self._batch_size = self.batch_size_fallback
        return self._batch_size

    def validate_numpy_input(self, output_list: list[str], input_dict: dict[str, Any]) -> None:
        """coffea's checks: known names, dimensions, shapes, all inputs, known outputs; a
        datatype that differs only warns (the array is converted)."""
        for name, array in input_dict.items():
            if name not in self.model_inputs:
                msg = f"Input [{name}] not defined in model! Inputs: {list(self.model_inputs)}"
                raise ValueError(msg)
            have, want = np.array(array.shape), np.array(self.model_inputs[name]["shape"])
            if len(have) != len(want):
                msg = f"Input [{name}] got wrong dimension: {len(have)} (Expected {len(want)})"
                raise ValueError(msg)
            if not all(np.where(want > 0, have == want, True)):
                msg = f"Input [{name}] got array of shape {have} (Expected: {want}, -1: any)"
                raise ValueError(msg)
            dtype = to_numpy_dtype(self.model_inputs[name]["datatype"])
            if array.dtype != dtype:
                warnings.warn(
                    f"Input [{name}] got array of type [{array.dtype}] (Expected [{dtype}])."
                    " Automatic conversion will be performed using numpy.array.astype.",
                    UserWarning,
                    stacklevel=2,
                )
        for name in self.model_inputs:
            if name not in input_dict:
                msg = f"Input [{name}] not given in input dictionary!"
                raise ValueError(msg)
        for name in output_list:
            if name not in self.model_outputs:
                msg = f"Requested output [{name}] not defined by model ({list(self.model_outputs)})"
                raise ValueError(msg)

    def numpy_call(self, output_list: list[str], input_dict: dict[str, Any]) -> dict:
        """All rows in requests of ``batch_size``, in flight together; outputs in row order."""
        n = len(next(iter(input_dict.values())))
        if n == 0:
            return {
                o: np.zeros(
                    (0, *self.model_outputs[o]["shape"][1:]),
                    to_numpy_dtype(self.model_outputs[o]["datatype"]),
                )
                for o in output_list
            }
        inputs = {
            name: np.ascontiguousarray(input_dict[name], to_numpy_dtype(props["datatype"]))
            for name, props in self.model_inputs.items()
        }
        outputs = self.client.run(inputs, self.batch_size)
        return {o: outputs[o] for o in output_list}

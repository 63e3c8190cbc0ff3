"""The PyTorch backend: TorchScript and torch.export models exported here, served for real."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from pysonic.backends import InstanceSpec, load_backend_class
from pysonic.errors import ModelConfigError
from pysonic.repository import load_model_config
from pysonic.server import EmbeddedServer, ServerOptions

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(180)


class Tagger(torch.nn.Module):
    """A small jet tagger: features [N, 8] and mask [N, 1] -> (probs [N, 3], logits [N, 3])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.hidden = torch.nn.Linear(8, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        logits = self.out(torch.relu(self.hidden(features))) * mask
        return torch.softmax(logits, dim=-1), logits


class DictTagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tagger = Tagger()

    def forward(self, inputs: dict[str, torch.Tensor]):
        return self.tagger(inputs["features"], inputs["mask"])[0]


def config(name: str, inputs: tuple[str, str], outputs: tuple[str, ...], extra: str = "") -> str:
    """``inputs``: the names of (features [8], mask [1]), in that order or reversed."""
    dims = {inputs[0]: 8, inputs[1]: 1} if "mask" not in inputs[0] else {inputs[0]: 1, inputs[1]: 8}
    ins = ",".join(f'{{ name: "{n}" data_type: TYPE_FP32 dims: [{d}] }}' for n, d in dims.items())
    outs = ",".join(f'{{ name: "{o}" data_type: TYPE_FP32 dims: [3] }}' for o in outputs)
    return f"""
name: "{name}"
backend: "pytorch"
max_batch_size: 32
input [{ins}]
output [{outs}]
dynamic_batching {{ max_queue_delay_microseconds: 100000 preferred_batch_size: [16] }}
{extra}
"""


def script(module: torch.nn.Module):
    with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10, still served
        warnings.filterwarnings("ignore", ".*torch.jit", DeprecationWarning)
        return torch.jit.script(module.eval())


def _save(repo: Path, name: str, text: str, save, filename: str = "model.pt") -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(text)
    save(repo / name / "1" / filename)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("torchrepo")
    scripted = script(Tagger())
    # Triton's positional naming
    _save(
        repo,
        "tagger_indexed",
        config("tagger_indexed", ("INPUT__0", "INPUT__1"), ("OUTPUT__1", "OUTPUT__0")),
        scripted.save,
    )
    # forward's argument names, listed in another order than forward takes them
    _save(
        repo,
        "tagger_named",
        config(
            "tagger_named",
            ("mask", "features"),
            ("probs", "logits"),
            'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }',
        ),
        scripted.save,
    )
    _save(
        repo,
        "tagger_dict",
        config("tagger_dict", ("features", "mask"), ("probs",)),
        script(DictTagger()).save,
    )
    batch = torch.export.Dim("batch", min=1, max=32)
    program = torch.export.export(
        Tagger().eval(),
        (torch.randn(2, 8), torch.ones(2, 1)),
        dynamic_shapes={"features": {0: batch}, "mask": {0: batch}},
    )
    _save(
        repo,
        "tagger_export",
        config(
            "tagger_export",
            ("features", "mask"),
            ("OUTPUT__0", "OUTPUT__1"),
            'default_model_filename: "model.pt2"',
        ),
        lambda path: torch.export.save(program, str(path)),
        "model.pt2",
    )
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[EmbeddedServer]:
    options = ServerOptions(
        model_repository=repo,
        host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        load_models=["*"],
        drain_timeout=10,
    )
    with EmbeddedServer(options) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: EmbeddedServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _jets(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.random((n, 1)) > 0.2).astype(np.float32)
    return rng.standard_normal((n, 8)).astype(np.float32), mask


def _direct(features: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        probs, logits = Tagger().eval()(torch.from_numpy(features), torch.from_numpy(mask))
    return probs.numpy(), logits.numpy()


def _infer(client, model: str, names: tuple[str, str], features, mask, module=grpcclient):
    inputs = []
    for name, array in zip(names, (features, mask), strict=True):
        i = module.InferInput(name, list(array.shape), "FP32")
        i.set_data_from_numpy(array)
        inputs.append(i)
    return client.infer(model, inputs)


def test_indexed_names_match_direct_torch(client) -> None:
    features, mask = _jets(5)
    probs, logits = _direct(features, mask)
    result = _infer(client, "tagger_indexed", ("INPUT__0", "INPUT__1"), features, mask)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), logits, rtol=1e-5, atol=1e-6)


def test_forward_argument_names_bind_by_name(client) -> None:
    features, mask = _jets(4, seed=1)
    probs, logits = _direct(features, mask)
    result = _infer(client, "tagger_named", ("features", "mask"), features, mask)
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-6)


def test_dict_input(client) -> None:
    features, mask = _jets(3, seed=2)
    result = _infer(client, "tagger_dict", ("features", "mask"), features, mask)
    np.testing.assert_allclose(result.as_numpy("probs"), _direct(features, mask)[0], rtol=1e-5)


def test_torch_export_program(client) -> None:
    features, mask = _jets(7, seed=3)
    probs, logits = _direct(features, mask)
    result = _infer(client, "tagger_export", ("features", "mask"), features, mask)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__0"), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT__1"), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["tagger_indexed", "tagger_export"])
async def test_concurrent_requests_are_batched(server: EmbeddedServer, model: str) -> None:
    names = ("INPUT__0", "INPUT__1") if model == "tagger_indexed" else ("features", "mask")
    output = "OUTPUT__0"
    jets = [_jets(1 + i % 3, seed=10 + i) for i in range(12)]
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        results = await asyncio.gather(*(_infer(c, model, names, f, m, aioclient) for f, m in jets))
        stats = await c.get_inference_statistics(model)
    for (features, mask), result in zip(jets, results, strict=True):
        np.testing.assert_allclose(
            result.as_numpy(output), _direct(features, mask)[0], rtol=1e-5, atol=1e-6
        )
    sizes = [b.batch_size for b in stats.model_stats[0].batch_stats]
    assert max(sizes) > 3, sizes  # several requests' rows ran in one forward call


def _spec(repo: Path, name: str, kind: str = "KIND_CPU") -> InstanceSpec:
    return InstanceSpec(name, 1, repo / name / "1", load_model_config(repo / name), kind=kind)


def test_kind_gpu_without_cuda_is_a_clear_error(repo: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelConfigError, match="KIND_GPU needs CUDA"):
        load_backend_class("pytorch")(_spec(repo, "tagger_indexed", "KIND_GPU"))


def test_config_mismatches_are_clear(repo: Path, tmp_path: Path) -> None:
    text = (repo / "tagger_indexed" / "config.pbtxt").read_text()
    bad = tmp_path / "bad"
    (bad / "1").mkdir(parents=True)
    (bad / "1" / "model.pt").write_bytes((repo / "tagger_indexed" / "1" / "model.pt").read_bytes())
    (bad / "config.pbtxt").write_text(
        text.replace("tagger_indexed", "bad").replace('{ name: "INPUT__1"', '{ name: "INPUT__7"')
    )
    with pytest.raises(ModelConfigError, match=r"input indices \[0, 7\] must be 0..1"):
        load_backend_class("pytorch")(_spec(tmp_path, "bad"))
    (bad / "config.pbtxt").write_text(
        text.replace("tagger_indexed", "bad")
        + "\n"
        + ('parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "many" } }')
    )
    with pytest.raises(ModelConfigError, match="INTRA_OP_THREAD_COUNT='many'"):
        load_backend_class("pytorch")(_spec(tmp_path, "bad"))


def test_missing_torch_names_the_extra(repo: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from pathlib import Path
        from pysonic.backends import InstanceSpec, load_backend_class
        from pysonic.errors import ModelConfigError
        from pysonic.repository import load_model_config
        path = Path({str(repo / "tagger_indexed")!r})
        spec = InstanceSpec("tagger_indexed", 1, path / "1", load_model_config(path))
        try:
            load_backend_class("pytorch")(spec)
        except ModelConfigError as err:
            print(err)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'pysonic[torch]'" in out.stdout
    assert "model 'tagger_indexed'" in out.stdout

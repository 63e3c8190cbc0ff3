"""Build the shipped demo models of ``model_repository/`` deterministically and time them.

``dense_tagger`` is a dense jet tagger with ParticleNet's input shape (20 features x 100
particles plus a mask) and full ParticleNet's compute: three EdgeConv-style blocks over K=16
fixed neighbours per particle with ParticleNet's channels (64,64,64), (128,128,128),
(256,256,256), ~0.82 GFLOP per jet, with small weights (<1 MB), built with ``onnx.helper`` only
(no torch)::

    pf_features [N,20,100] -> Transpose -> h [N,100,20]
    3 x edge block: h_j (j = i+1..i+K mod 100, Gather) -> concat(h_i, h_j - h_i) [N,100,K,2C]
           -> edge MLP (3 layers) -> mean over K -> h [N,100,C']
    pf_mask     [N,1,100]  -> Transpose -> [N,100,1]  -> masked mean over particles -> [N,256]
    -> MatMul/Add/Relu 256->64 -> MatMul/Add 64->5 -> Softmax -> softmax [N,5]

The fixed neighbourhood (instead of ParticleNet's kNN) keeps the graph simple while the FLOPs,
and so the serving-overhead-to-compute ratio, stay realistic for benchmarks.

``identity_fp32`` (INPUT0 -> OUTPUT0, FP32 [-1], max_batch_size 64) measures protocol overhead.

Running the script twice writes byte-identical files (fixed seed, no timestamps). Usage::

    python benchmarks/make_dense_model.py                 # writes model_repository/, prints timings
    python benchmarks/make_dense_model.py --no-bench --output /tmp/repo
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # opset 17 needs IR 8; keeps the file loadable by onnxruntime >= 1.14
SEED = 20240607
FEATURES, PARTICLES, CLASSES = 20, 100, 5
K = 16  # neighbours per particle in each edge block
BLOCKS = ((64, 64, 64), (128, 128, 128), (256, 256, 256))  # ParticleNet's EdgeConv channels
HEAD = 64

DENSE_CONFIG = f"""\
name: "dense_tagger"
backend: "onnxruntime"
max_batch_size: 64
input [
  {{ name: "pf_features" data_type: TYPE_FP32 dims: [{FEATURES}, {PARTICLES}] }},
  {{ name: "pf_mask" data_type: TYPE_FP32 dims: [1, {PARTICLES}] }}
]
output [
  {{ name: "softmax" data_type: TYPE_FP32 dims: [{CLASSES}] }}
]
dynamic_batching {{
  preferred_batch_size: [16]
  max_queue_delay_microseconds: 2000
}}
instance_group [{{ count: 1 kind: KIND_CPU }}]
"""

IDENTITY_CONFIG = """\
name: "identity_fp32"
backend: "onnxruntime"
max_batch_size: 64
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [-1] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [-1] }
]
instance_group [{ count: 1 kind: KIND_CPU }]
"""


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="pysonic",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _dense(rng: np.random.Generator, name: str, n_in: int, n_out: int) -> list[onnx.TensorProto]:
    """He-initialised weights (so activations stay O(1)) and small biases."""
    w = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
    b = rng.standard_normal(n_out) * 0.1
    return [
        numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
        numpy_helper.from_array(b.astype(np.float32), f"{name}_b"),
    ]


def _mlp(
    nodes: list,
    inits: list,
    rng: np.random.Generator,
    x: str,
    name: str,
    n_in: int,
    n_out: int,
    *,
    relu: bool = True,
) -> str:
    inits += _dense(rng, name, n_in, n_out)
    nodes.append(helper.make_node("MatMul", [x, f"{name}_w"], [f"{name}_mm"]))
    out = f"{name}_pre" if relu else f"{name}_out"
    nodes.append(helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [out]))
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}_out"]))
    return f"{name}_out"


def dense_tagger(seed: int = SEED) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Transpose", ["pf_features"], ["x_t"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["pf_mask"], ["mask_t"], perm=[0, 2, 1]),
    ]
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array([1], np.int64), "particle_axis"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    inits += [
        numpy_helper.from_array(
            ((np.arange(PARTICLES)[:, None] + np.arange(1, K + 1)[None, :]) % PARTICLES).astype(
                np.int64
            ),
            "nbr_idx",
        ),
        numpy_helper.from_array(np.array([2], np.int64), "k_axis"),
        numpy_helper.from_array(np.array([1, 1, K, 1], np.int64), "k_tile"),
    ]
    # Padded particles carry zeros into every block, so their features never matter.
    nodes.append(helper.make_node("Mul", ["x_t", "mask_t"], ["x_masked"]))
    h, width = "x_masked", FEATURES
    for b, widths in enumerate(BLOCKS):
        h, width = _edge_block(nodes, inits, rng, h, width, f"b{b}", widths)
        nodes.append(helper.make_node("Mul", [h, "mask_t"], [f"b{b}_masked"]))
        h = f"b{b}_masked"
    nodes += [  # masked mean over particles: sum(h * mask) / max(sum(mask), 1)
        helper.make_node("Mul", [h, "mask_t"], ["h_masked"]),
        helper.make_node("ReduceSum", ["h_masked", "particle_axis"], ["h_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["mask_t", "particle_axis"], ["n_sum"], keepdims=0),
        helper.make_node("Max", ["n_sum", "one"], ["n_safe"]),
        helper.make_node("Div", ["h_sum", "n_safe"], ["pooled"]),
    ]
    h = _mlp(nodes, inits, rng, "pooled", "head0", width, HEAD)
    logits = _mlp(nodes, inits, rng, h, "head1", HEAD, CLASSES, relu=False)
    nodes.append(helper.make_node("Softmax", [logits], ["softmax"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "dense_tagger",
        [
            helper.make_tensor_value_info(
                "pf_features", TensorProto.FLOAT, ["N", FEATURES, PARTICLES]
            ),
            helper.make_tensor_value_info("pf_mask", TensorProto.FLOAT, ["N", 1, PARTICLES]),
        ],
        [helper.make_tensor_value_info("softmax", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=inits,
    )
    return _model(graph)


def _edge_block(
    nodes: list,
    inits: list,
    rng: np.random.Generator,
    h: str,
    width: int,
    name: str,
    widths: tuple[int, ...],
) -> tuple[str, int]:
    """EdgeConv over K fixed neighbours: MLP(concat(h_i, h_j - h_i)) averaged over j."""
    nodes += [
        helper.make_node("Gather", [h, "nbr_idx"], [f"{name}_nbr"], axis=1),  # [N,100,K,C]
        helper.make_node("Unsqueeze", [h, "k_axis"], [f"{name}_hi"]),  # [N,100,1,C]
        helper.make_node("Tile", [f"{name}_hi", "k_tile"], [f"{name}_hik"]),  # [N,100,K,C]
        helper.make_node("Sub", [f"{name}_nbr", f"{name}_hik"], [f"{name}_diff"]),
        helper.make_node("Concat", [f"{name}_hik", f"{name}_diff"], [f"{name}_in"], axis=-1),
    ]
    e, w = f"{name}_in", 2 * width
    for i, n_out in enumerate(widths):
        e, w = _mlp(nodes, inits, rng, e, f"{name}_e{i}", w, n_out), n_out
    nodes.append(helper.make_node("ReduceMean", [e], [f"{name}_out"], axes=[2], keepdims=0))
    return f"{name}_out", w


def identity_fp32() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "identity_fp32",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", "M"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", "M"])],
    )
    return _model(graph)


def write(repo: Path, name: str, model: onnx.ModelProto, config: str) -> Path:
    path = repo / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString(deterministic=True))
    (repo / name / "config.pbtxt").write_text(config)
    return path


def example_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random jets with 10..100 real particles each (mask 1), zero-padded like real inputs."""
    rng = np.random.default_rng(seed)
    n = rng.integers(10, PARTICLES + 1, size=batch)
    mask = (np.arange(PARTICLES)[None, :] < n[:, None]).astype(np.float32)[:, None, :]
    feats = rng.standard_normal((batch, FEATURES, PARTICLES)).astype(np.float32) * mask
    return {"pf_features": feats, "pf_mask": mask}


def bench(path: Path, batches: tuple[int, ...] = (1, 16, 64), threads: int = 1) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    print(f"dense_tagger on CPU, {threads} intra-op thread(s), onnxruntime {ort.__version__}")
    print(f"{'batch':>6} {'ms/batch':>10} {'ms/jet':>8}")
    for batch in batches:
        feed = example_inputs(batch)
        out = session.run(None, feed)[0]
        assert np.allclose(out.sum(axis=1), 1, atol=1e-5)
        times = []
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline or len(times) < 20:
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        ms = float(np.median(times)) * 1e3
        print(f"{batch:>6} {ms:>10.3f} {ms / batch:>8.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--output", type=Path, default=root / "model_repository")
    parser.add_argument("--no-bench", action="store_true", help="only write the models")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for timing")
    args = parser.parse_args()
    dense = write(args.output, "dense_tagger", dense_tagger(), DENSE_CONFIG)
    write(args.output, "identity_fp32", identity_fp32(), IDENTITY_CONFIG)
    params = sum(int(np.prod(t.dims)) for t in onnx.load(dense).graph.initializer)
    per_edge, width = 0, FEATURES
    for widths in BLOCKS:
        per_edge += sum(a * b for a, b in zip((2 * width, *widths), widths, strict=False))
        width = widths[-1]
    flops = 2 * PARTICLES * K * per_edge
    print(
        f"wrote {dense} ({dense.stat().st_size / 1024:.0f} KiB, {params} parameters, "
        f"~{flops / 1e6:.1f} MFLOP per jet)"
    )
    if not args.no_bench:
        bench(dense, threads=args.threads)


if __name__ == "__main__":
    main()

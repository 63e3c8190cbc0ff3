"""Direct (in-process) onnxruntime throughput of the shipped HEP models vs batch size.

Seed 001's method (``pysonic.perf.direct``): batch sizes 4 ... 2048 (powers of two), 100 trials
each on fresh random inputs, only the inference call timed, T = N / median latency. Also the
event rate of generation (Pythia8 + FastJet) and of feature building (ParticleNet/ParT AK8 and
AK4 jets, DeepMET events).

    python benchmarks/direct_inference.py --quick --json out/direct.json --plot out/direct.png

Full mode caps one batch size at ``--max-seconds-per-point`` of timed calls (default 20 s; the
trials actually run are in the table and JSON); ``--max-seconds-per-point 0`` runs all trials.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import onnxruntime as ort
from rich.console import Console

from pysonic.perf.direct import PROVIDERS, bench_direct, direct_table, plot_direct

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("particlenet_lite", "particlenet", "part", "deepmet")
console = Console()


def event_rates(n: int) -> dict[str, float]:
    """Events/s of generation and of building every model's inputs (ttbar)."""
    from pysonic.events import deepmet_inputs, jet_inputs, simulate

    start = time.perf_counter()
    events = simulate("ttbar", n, seed=4242)
    generated = time.perf_counter()
    jets8 = jet_inputs(events, "ak8")
    jets4 = jet_inputs(events, "ak4")
    deepmet_inputs(events)
    built = time.perf_counter()
    return {
        "events": n,
        "generation_events_per_s": n / (generated - start),
        "features_events_per_s": n / (built - generated),
        "ak8_jets": len(jets8["label"]),
        "ak4_jets": len(jets4["label"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a run of under a minute")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, default=ROOT / "out" / "direct_inference.png")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--provider", default="cpu", choices=sorted(PROVIDERS))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--max-seconds-per-point", type=float)
    parser.add_argument(
        "--threads", type=int, help="onnxruntime intra-op threads (default: all cores)"
    )
    args = parser.parse_args()

    batches = [4, 16, 64, 256] if args.quick else [2**k for k in range(2, 12)]
    trials = args.trials or (10 if args.quick else 100)
    cap = args.max_seconds_per_point
    cap = (2.0 if args.quick else 20.0) if cap is None else cap
    points = []
    for name in args.models:
        path = args.repository / name
        if not path.exists():
            console.print(f"[yellow]skip {name}: {path} missing[/yellow]")
            continue
        points += bench_direct(
            path,
            batches,
            trials=trials,
            provider=args.provider,
            threads=args.threads,
            max_seconds_per_point=cap or None,
        )
    table = direct_table(points, f"direct onnxruntime ({args.provider}), T = N / median latency")
    console.print(table)
    rates = event_rates(40 if args.quick else 400)
    console.print(
        f"ttbar events: generation {rates['generation_events_per_s']:.1f} ev/s, feature building "
        f"{rates['features_events_per_s']:.1f} ev/s "
        f"({rates['ak8_jets']} AK8 + {rates['ak4_jets']} AK4 jets)"
    )
    plot = plot_direct(
        points, args.plot, f"direct onnxruntime on {platform.processor() or platform.machine()}"
    )
    console.print(f"plot: {plot}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "onnxruntime": ort.__version__,
                    "quick": args.quick,
                    "trials": trials,
                    "max_seconds_per_point": cap,
                    "points": [p.as_dict() for p in points],
                    "events": rates,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

"""One client job of the planner's validation: the miniAOD-like workflow in its own process.

Run by :mod:`pysonic.perf.validate` as ``python -m pysonic.perf._planjob SPEC_JSON OUT_JSON``.
The job pins itself to the given cores, loads its events and imports everything, prints
``READY`` and waits for a line on stdin, so that all jobs start their events together; it then
runs :func:`pysonic.workflow.run_workflow` (what ``pysonic workflow run`` runs) and writes the
timing report, each event's completion time (monotonic ns, comparable across processes) and the
jets per event to OUT_JSON.

Example spec::

    {"mode": "sonic-async", "server": "127.0.0.1:8001", "events": 100, "cores": [0],
     "streams": 1, "threads": 1, "repository": "model_repository"}
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("cores"):
        os.sched_setaffinity(0, set(spec["cores"]))
    from pysonic.workflow import WorkflowConfig, load_payloads, run_workflow

    repo = Path(spec.get("repository", "model_repository"))
    config = WorkflowConfig(
        streams=int(spec.get("streams", 1)),
        threads=int(spec.get("threads", 1)),
        events=int(spec["events"]),
        output=None,
    ).with_inference(model_repository=repo, server=spec.get("server") or "local")
    config = config.with_mode(spec["mode"])
    config = replace(
        config, modules={n: replace(c, timeout=120.0) for n, c in config.modules.items()}
    )
    payloads = load_payloads("sample", config.events, spread=True)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the harness starts every job at once
    ends: list[int] = []
    result = run_workflow(
        config, payloads=payloads, progress=lambda _: ends.append(time.monotonic_ns())
    )
    out = {
        "report": result.report.to_dict(),
        "event_end_ns": ends,
        "ak8_jets": [len(o["ak8_pt"]) for o in result.outputs],
        "ak4_jets": [len(o["ak4_pt"]) for o in result.outputs],
    }
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

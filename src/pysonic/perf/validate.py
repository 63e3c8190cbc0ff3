"""Validate the t_SONIC planner here: k real client jobs against one local CPU server.

The experiment, all with real processes:

1. one ``pysonic serve`` (ParticleNet-Lite, ParT, DeepMET) pinned to ``server_cores``: the
   "coprocessor". On a CPU server ``t_GPU`` is simply the server's time per event: its cores
   play the GPU, so they must not be shared with the jobs, hence the pinning. Each model runs
   one instance per server core (``server_instances``), so the server works through its queue
   as the model assumes: with more instances than cores, two jobs' requests run side by side at
   half speed, finish together, and the jobs then do their CPU work at the same time while the
   server idles (measured: k = 2 at -18% with two instances on one core, -6% with one);
2. one job with every ML module direct (in-process, one thread) on ``client_cores`` gives the
   timing report, hence ``p`` and ``t_CPU``, and the jets per event;
3. the load generator measures the server's saturated throughput for each request kind the
   workflow sends (ParticleNet-Lite on the AK8 jets, on the AK4 jets, ParT on the AK8 jets,
   DeepMET per event, each at the workflow's mean batch); ``t_GPU = sum(requests per event /
   requests per s)``;
4. ``t_latency`` is the median ServerLive round trip;
5. for each k, k jobs (sonic-async, one stream, one thread each, pinned to ``client_cores``)
   start their events together; each job's events/s is counted over the interval in which all k
   ran, and compared with ``1 / t_SONIC(k)``.

The jobs share ``client_cores``: the model gives every job its own CPU, so the comparison holds
while the jobs' own CPU work, ``k (1 - p) t_CPU / t_SONIC(k)``, stays well under those cores (it
is reported as ``client_load``).

Example::

    result = validate(ValidationSettings(ks=(1, 2, 3, 4), events=100))
    for row in result.rows:
        print(row.k, row.measured, row.predicted, row.error)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pysonic.perf._control import Control
from pysonic.perf._engine import LoadLevel
from pysonic.perf._inputs import ModelIO, make_input_sets
from pysonic.perf._senders import TargetSpec
from pysonic.perf.plan import SonicModel, ping, timing_inputs
from pysonic.perf.profiler import ProfileSettings, profile
from pysonic.perf.tune import config_with, link_model

if TYPE_CHECKING:
    from pysonic.server.process import ServerProcess

__all__ = ["ValidationResult", "ValidationRow", "ValidationSettings", "validate"]

MODELS = ("particlenet_lite", "part", "deepmet")


@dataclass(frozen=True)
class ValidationSettings:
    ks: Sequence[int] = (1, 2, 3, 4)
    events: int = 100  #: per job
    direct_events: int = 100
    repository: Path = Path("model_repository")
    server_cores: Sequence[int] | None = None  #: default: the upper half of this host's cores
    client_cores: Sequence[int] | None = None  #: default: the rest
    server_instances: int | None = None  #: instances per model (default: one per server core)
    perf: ProfileSettings = field(
        default_factory=lambda: ProfileSettings(window_ms=1500, max_trials=6, stability_pct=10)
    )
    perf_concurrency: Sequence[int] = (1, 2, 4)


@dataclass
class ValidationRow:
    k: int
    measured: float  #: events/s per job (mean over the k jobs)
    predicted: float  #: 1 / t_SONIC(k)
    per_job: list[float]
    window_s: float
    client_load: float  #: the jobs' own CPU work over the client cores (model's assumption: < 1)
    server_cpu_ms_per_event: float = 0.0  #: the server's CPU time per event over the run
    server_busy: float = 0.0  #: the server's CPU time / (wall time x its cores) over the run
    server_cores_busy: float = 0.0  #: the server's cores busy with anything (others' work too)
    predicted_cpu: float = 0.0  #: 1 / t_SONIC(k) with t_GPU from the server's CPU time

    @property
    def error_cpu(self) -> float:
        return self.measured / self.predicted_cpu - 1.0 if self.predicted_cpu else float("nan")

    @property
    def error(self) -> float:
        return self.measured / self.predicted - 1.0


@dataclass
class ValidationResult:
    model: SonicModel  #: t_GPU from the load generator's best saturated throughput
    model_cpu: SonicModel  #: t_GPU from the server's CPU time per request under that load
    rows: list[ValidationRow]
    inputs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "model_cpu": self.model_cpu.to_dict(),
            "inputs": self.inputs,
            "rows": [{**asdict(r), "error": r.error, "error_cpu": r.error_cpu} for r in self.rows],
        }


def _cores(settings: ValidationSettings) -> tuple[list[int], list[int]]:
    have = sorted(os.sched_getaffinity(0))
    if settings.server_cores is not None and settings.client_cores is not None:
        return list(settings.server_cores), list(settings.client_cores)
    if len(have) < 2:
        return have, have
    half = len(have) // 2
    return have[half:], have[:half]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cores_busy_s(cores: Sequence[int]) -> float:
    """CPU seconds the ``cores`` spent busy (any process), from /proc/stat."""
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(v) for v in values]
            total += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
    return total / os.sysconf("SC_CLK_TCK")


def _pin_process(pid: int, cores: Sequence[int]) -> None:
    """Pin every thread of ``pid`` (threads made later inherit the mask)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), set(cores))


def _run_jobs(
    n: int, spec: dict[str, Any], work: Path, timeout: float = 900.0
) -> list[dict[str, Any]]:
    """Start ``n`` job processes, wait until each is READY, start them together, collect."""
    procs, outs = [], []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for i in range(n):
        spec_path, out = work / f"job{n}_{i}.json", work / f"job{n}_{i}.out.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "pysonic.perf._planjob", str(spec_path), str(out)]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        )
        outs.append(out)
    try:
        for p in procs:
            line = p.stdout.readline() if p.stdout else ""
            if "READY" not in line:
                msg = f"a client job failed to start (exit {p.wait(30)})"
                raise RuntimeError(msg)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        for p in procs:
            if p.wait(timeout) != 0:
                msg = f"a client job failed (exit {p.returncode})"
                raise RuntimeError(msg)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for pipe in (p.stdin, p.stdout):
                if pipe is not None:
                    pipe.close()
    return [json.loads(o.read_text()) for o in outs]


def _common_rates(jobs: list[dict[str, Any]]) -> tuple[list[float], float]:
    """Each job's events/s over the interval in which every job was processing events."""
    ends = [np.asarray(j["event_end_ns"], np.int64) for j in jobs]
    begin = max(int(e[0]) for e in ends)  # every job has finished its first event
    stop = min(int(e[-1]) for e in ends)  # ... and none its last
    if stop <= begin:
        msg = "the jobs did not overlap: use more events per job"
        raise RuntimeError(msg)
    seconds = (stop - begin) / 1e9
    return [float(((e > begin) & (e <= stop)).sum()) / seconds for e in ends], seconds


def _t_gpu(
    url: str, pid: int, jets: dict[str, float], settings: ValidationSettings
) -> tuple[float, dict[str, Any]]:
    """Server time per event from the load generator's saturated throughput per request kind."""
    kinds = [  # (name, model, batch, requests per event)
        ("particlenet_lite ak8", "particlenet_lite", jets["ak8_batch"], jets["ak8_frac"]),
        ("particlenet_lite ak4", "particlenet_lite", jets["ak4_batch"], jets["ak4_frac"]),
        ("part ak8", "part", jets["ak8_batch"], jets["ak8_frac"]),
        ("deepmet", "deepmet", 1, 1.0),
    ]
    total, detail = 0.0, {}
    with Control("grpc", url) as control:
        for name, model, batch, per_event in kinds:
            io = ModelIO.from_config(control.model_config(model))
            sets = make_input_sets(io, batch=int(batch))
            spec = TargetSpec("grpc", url, model, tuple(sets), outputs=io.outputs)
            levels = [LoadLevel(concurrency=c) for c in settings.perf_concurrency]
            before, cpu0 = control.statistics(model), _cpu_s(pid)
            results, _ = profile(spec, control, levels, settings.perf)
            served = (control.statistics(model) - before).success_count
            cpu_ms = (_cpu_s(pid) - cpu0) / max(1, served) * 1e3
            rate = max(r.requests_per_s for r in results)
            total += per_event / rate
            detail[name] = {
                "batch": int(batch),
                "per_event": per_event,
                "requests_per_s": rate,
                "server_cpu_ms_per_request": cpu_ms,
            }
    return total, detail


def validate(
    settings: ValidationSettings = ValidationSettings(),
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Run the experiment in the module docstring; the model's inputs are all measured."""
    say = progress or (lambda _: None)
    server_cores, client_cores = _cores(settings)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(client_cores))  # this process (and the load generator) too
    try:
        return _validate(settings, server_cores, client_cores, say)
    finally:
        os.sched_setaffinity(0, mine)


def _validate(
    settings: ValidationSettings,
    server_cores: list[int],
    client_cores: list[int],
    say: Callable[[str], None],
) -> ValidationResult:
    from pysonic.server.process import ServerProcess

    repo = settings.repository.resolve()
    base = {"repository": str(repo), "streams": 1, "threads": 1, "cores": client_cores}
    instances = settings.server_instances or len(server_cores)  # resolved once, reported as used
    settings = replace(settings, server_instances=instances)
    with tempfile.TemporaryDirectory(prefix="pysonic-validate-") as tmp:
        served = Path(tmp) / "served"
        served.mkdir()
        for name in MODELS:
            text = (repo / name / "config.pbtxt").read_text()
            link_model(repo, name, served, config_with(text, {"instance_count": instances}))
        with ServerProcess(served, models=list(MODELS)) as server:
            _pin_process(server.proc.pid, server_cores)  # type: ignore[union-attr]
            return _experiment(settings, server, base, Path(tmp), server_cores, client_cores, say)


def _experiment(
    settings: ValidationSettings,
    server: ServerProcess,
    base: dict[str, Any],
    work: Path,
    server_cores: list[int],
    client_cores: list[int],
    say: Callable[[str], None],
) -> ValidationResult:
    from pysonic.workflow import TimingReport
    from pysonic.workflow._miniaod import ML_MODULES

    say("direct job: p and t_CPU")
    (direct,) = _run_jobs(1, {**base, "mode": "direct", "events": settings.direct_events}, work)
    p, t_cpu = timing_inputs(TimingReport.from_dict(direct["report"]), ML_MODULES)
    ak8, ak4 = np.asarray(direct["ak8_jets"]), np.asarray(direct["ak4_jets"])
    jets = {
        "ak8_frac": float((ak8 > 0).mean()),
        "ak8_batch": max(1.0, round(float(ak8[ak8 > 0].mean()))) if (ak8 > 0).any() else 1,
        "ak4_frac": float((ak4 > 0).mean()),
        "ak4_batch": max(1.0, round(float(ak4[ak4 > 0].mean()))) if (ak4 > 0).any() else 1,
    }
    say("load generator: t_GPU")
    pid = server.proc.pid  # type: ignore[union-attr]
    t_gpu, kinds = _t_gpu(server.grpc_url, pid, jets, settings)
    t_latency = ping(server.grpc_url)
    model = SonicModel(p=p, t_cpu=t_cpu, t_gpu=t_gpu, t_latency=t_latency)
    t_gpu_cpu = sum(k["per_event"] * k["server_cpu_ms_per_request"] for k in kinds.values())
    model_cpu = replace(model, t_gpu=t_gpu_cpu / 1e3 / len(server_cores))
    rows = []
    for k in settings.ks:
        say(f"{k} sonic-async job(s)")
        spec = {**base, "mode": "sonic-async", "server": server.grpc_url}
        cpu0, core0, wall0 = _cpu_s(pid), _cores_busy_s(server_cores), time.monotonic()
        jobs = _run_jobs(k, {**spec, "events": settings.events}, work)
        cpu, wall = _cpu_s(pid) - cpu0, (time.monotonic() - wall0) * len(server_cores)
        server_busy = cpu / wall
        cores_busy = (_cores_busy_s(server_cores) - core0) / wall
        rates, seconds = _common_rates(jobs)
        predicted = model.events_per_s(k)
        load = k * (1 - p) * t_cpu * float(np.mean(rates)) / len(client_cores)
        rows.append(
            ValidationRow(
                k, float(np.mean(rates)), predicted, rates, seconds, load,
                server_cpu_ms_per_event=cpu / (k * settings.events) * 1e3,
                server_busy=server_busy,
                server_cores_busy=cores_busy,
                predicted_cpu=model_cpu.events_per_s(k),
            )
        )  # fmt: skip
    inputs = {
        "server_cores": server_cores,
        "server_instances": settings.server_instances,
        "client_cores": client_cores,
        "jets": jets,
        "request_kinds": kinds,
        "t_gpu_server_cpu_ms": model_cpu.t_gpu * 1e3,
        "events_per_job": settings.events,
        "direct_events": settings.direct_events,
    }
    return ValidationResult(model, model_cpu, rows, inputs)

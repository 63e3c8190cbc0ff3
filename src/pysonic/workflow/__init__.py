"""A CMSSW-like multithreaded event framework: streams, a thread pool and ExternalWork modules.

Why: SONIC's throughput gain comes from the framework serving other events while an ML
module's inference request is in flight; this package is the framework pysonic's miniAOD-like
workflow runs on, with FastTimerService-like timing to measure the inference share p.

Example::

    from pysonic.workflow import Process

    report = Process([Jets(), Tagger()], streams=4, threads=2).run(payloads)
    print(report.events_per_s, report.inference_share({"tagger"}))
"""

from __future__ import annotations

from pysonic.workflow._config import InferenceConfig, WorkflowConfig
from pysonic.workflow._event import Event, ExternalWork, Module, Producer, WaitingTaskHolder
from pysonic.workflow._framework import Process, ProcessError
from pysonic.workflow._miniaod import WorkflowResult, load_payloads, run_workflow
from pysonic.workflow._timing import ModuleTiming, TimingReport

__all__ = [
    "Event",
    "ExternalWork",
    "InferenceConfig",
    "Module",
    "ModuleTiming",
    "Process",
    "ProcessError",
    "Producer",
    "TimingReport",
    "WaitingTaskHolder",
    "WorkflowConfig",
    "WorkflowResult",
    "load_payloads",
    "run_workflow",
]

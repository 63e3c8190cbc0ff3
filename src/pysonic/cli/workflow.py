"""``pysonic workflow run``: the miniAOD-like workflow from a configuration file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(help="Run the miniAOD-like event workflow.", no_args_is_help=True)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option(help="Workflow configuration (TOML); default: all direct.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="Override every ML module: direct | sonic-sync | sonic-async | sonic-pseudoasync."
        ),
    ] = None,
    events: Annotated[int | None, typer.Option(help="At most this many events.")] = None,
    timing_json: Annotated[
        Path | None, typer.Option(help="Write the timing report (JSON) here.")
    ] = None,
) -> None:
    """Run the workflow and print its timing report (per module, events/s, inference share)."""
    from dataclasses import replace

    from pysonic.workflow import WorkflowConfig, run_workflow
    from pysonic.workflow._miniaod import ML_MODULES

    cfg = WorkflowConfig.from_file(config) if config else WorkflowConfig()
    if mode is not None:
        cfg = cfg.with_mode(mode)
    if events is not None:
        cfg = replace(cfg, events=events)
    result = run_workflow(cfg)
    console = Console()
    console.print(result.report.table())
    console.print(
        f"{result.report.events} events, {result.report.events_per_s:.1f} events/s, "
        f"inference share p = {result.report.inference_share(ML_MODULES):.2f}, "
        f"modes: {result.modes}"
    )
    if result.auc is not None:
        console.print(f"ParticleNet AK8 top-vs-QCD AUC: {result.auc:.4f}")
    if result.output_path:
        console.print(f"outputs: {result.output_path}")
    if timing_json:
        result.report.to_json(timing_json)
        console.print(f"timing: {timing_json}")

"""Helpers of ``benchmarks/peers.py``: peer environments, server launchers, the served scripts.

The scripts ``pytriton_serve.py`` and ``mlserver_ort.py`` run inside the peers' own virtual
environments (``.peer-envs/``), so they import nothing from pysonic; ``echo_server.py`` runs on
the benchmark's own interpreter.
"""

"""Experiment scripts (CLIs) that produce the committed results under ``figures/``.

Each is run as ``python -m tvmlib.experiments.<name> --config configs/<name>_*.yaml`` and writes
a JSON file with its provenance; notebooks only load and plot those files.
"""

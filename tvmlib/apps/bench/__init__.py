"""GPU benchmarks writing results under figures/: ``python -m tvmlib.apps.bench.<name>``."""

"""GPU benchmarks that write result files under figures/ (run as ``python -m tvmlib.apps.bench.X``)."""

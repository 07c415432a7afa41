"""Utilities under every layer: where things live, atomic writes, provenance, CUDA helpers,
plots."""

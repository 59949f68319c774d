"""Sandbox apps the benchmarks run (each module is an app entry: ``module:children``)."""

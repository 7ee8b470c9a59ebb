"""Workloads, training and reporting of `benchmarks/lopt_suite.py`."""

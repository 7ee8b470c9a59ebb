"""Peer implementations the benchmarks compare keras_meta against."""

"""Importable logic behind the scripts in examples/."""

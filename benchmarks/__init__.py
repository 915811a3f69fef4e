"""Measured benchmarks: ``python -m benchmarks NAME``. They print tables, never assert."""

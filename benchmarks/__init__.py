"""Benchmarks: one module per claim, each run as ``python -m benchmarks.NAME``.

Each writes ``results/benchmarks/NAME.json``; ``python -m benchmarks.make_table`` renders them.
"""

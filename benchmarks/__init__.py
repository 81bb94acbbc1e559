"""Benchmarks of the Mesa operator and of the models (``python -m benchmarks.bench_mesa_op``,
``python -m benchmarks.bench_models``); shared machinery in :mod:`benchmarks.harness`."""

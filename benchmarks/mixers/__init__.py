"""The model benchmark's parts; the script and its documentation: :mod:`benchmarks.bench_models`."""

"""The Mesa operator benchmark's parts; the script and its documentation: :mod:`benchmarks.bench_mesa_op`."""

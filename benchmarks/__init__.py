"""Benchmarks and the toy models they and the tests share; run from the repository root with
`python -m benchmarks.<name>` (not installed with ssl_kd, which holds only what training uses)."""

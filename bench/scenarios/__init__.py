"""The scenarios of ``push-bridge bench``, a module each (``rooms`` with its per-push figures and
its report beside it). Each ``run_*`` takes the harness and the options and returns a JSON-able
result with its ``summary`` rows; docs/benchmarks.md says what each one measures."""

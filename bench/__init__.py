"""The benchmarks of ``push-bridge bench`` and the scripts beside them (see ``bench/README.md``).

Not part of the installed package: it runs from a source checkout (``pip install -e '.[bench]'``).
"""

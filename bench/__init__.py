"""Permafrost's benchmarks against the built-in baselines on the local control plane.

``python -m bench`` (``make bench``) runs them and writes ``docs/benchmarks.md``; ``--smoke``
runs each at tiny sizes (the integration suite does, so the harness cannot rot).
"""

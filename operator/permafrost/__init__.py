"""Permafrost: immutable, guarded workload rollouts for Kubernetes."""

__version__ = "0.1.0"

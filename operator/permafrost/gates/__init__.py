"""Promotion gates: checks a revision must pass before (and after) it takes traffic."""

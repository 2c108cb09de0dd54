"""Hydra jobs that produce artifacts: organism, extract, probe, sae."""

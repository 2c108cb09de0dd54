"""Hydra jobs that consume artifacts: pipeline (the main job), and later match, steer, report."""

"""Timed comparisons (ratios against a baseline run in the same process); never used by tests."""

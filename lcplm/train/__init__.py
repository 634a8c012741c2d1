"""Trainer construction, strategies, callbacks and the run directory."""

"""Downstream metrics and reports."""

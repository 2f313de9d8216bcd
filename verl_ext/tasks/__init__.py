"""Synthetic tasks the project generates itself (no downloads)."""

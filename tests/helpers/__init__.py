"""Shared test helpers (fake run dirs, ...)."""

"""Shared test helpers (import as ``from tests.helpers.config import compose_cfg``); test modules import no other."""

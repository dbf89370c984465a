"""Experiment code that is not part of the core framework (probes, studies); each module backs a script in scripts/."""

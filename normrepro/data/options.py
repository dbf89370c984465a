"""Reading a dataset's options: every key a loader reads is set in its YAML (normrepro/conf/dataset), the one place
of dataset defaults; the loaders have none of their own."""
from __future__ import annotations

from normrepro.errors import ConfigError


def required(cfg, key: str):
    """``cfg[key]``, or a ConfigError naming the key and the YAML that sets it."""
    if key not in cfg:
        raise ConfigError(f"dataset.{key} is not set (normrepro/conf/dataset/{cfg.get('name')}.yaml sets it)")
    return cfg[key]

"""User-facing errors: one line, naming the bad value and the accepted ones."""


class ConfigError(ValueError):
    """A bad user input (config value, path, checkpoint). ``train.py`` prints it as one line and exits 2."""


def choice_error(what: str, value, choices) -> ConfigError:
    """``ConfigError("unknown norm 'foo'; choose one of: l1, l2")``."""
    return ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(map(str, choices)))}")

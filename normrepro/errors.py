"""User-facing errors: one line, naming the bad value and the accepted ones; the exit codes of ``train.py``."""

EXIT_BAD_INPUT = 2  # a ConfigError: bad config value, unreadable/unsafe file, unusable run dir, full disk
EXIT_DIVERGED = 3  # the run stopped as diverged (metrics.json: status diverged, env.diverged = the reason)
# 4 (normrepro.preemption.EXIT_PREEMPTED): stopped on SIGTERM/SIGUSR2 after saving a checkpoint; rerun to resume


class ConfigError(ValueError):
    """A bad user input (config value, path, checkpoint). ``train.py`` prints it as one line and exits 2."""


class StorageError(ConfigError):
    """A file that could not be written (disk full, file too large, quota, read-only): one line, exit 2."""


class DataFileError(ConfigError):
    """A data file that cannot be read (corrupt image, damaged batch); the message names the file.

    A DataLoader worker re-raises it in the main process as ``DataFileError("Caught DataFileError in DataLoader
    worker process 0.\\nOriginal Traceback ...: <message>")``; the constructor keeps only the original message,
    so it stays one line."""

    def __init__(self, message: str):
        super().__init__(original_message(str(message), type(self).__name__))


def original_message(text: str, class_name: str) -> str:
    """The message of an exception ``class_name`` out of a traceback text (its last ``...ClassName: msg`` line);
    ``text`` itself when it is no traceback."""
    if "Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        head, sep, rest = line.partition(": ")
        if sep and head.rsplit(".", 1)[-1] == class_name:
            return rest.strip()
    return one_line(text)


def one_line(message) -> str:
    """An exception (or text) as one line: its first non-empty line, whitespace collapsed."""
    text = str(message)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return lines[0] if lines else (type(message).__name__ if isinstance(message, BaseException) else "")


def choice_error(what: str, value, choices) -> ConfigError:
    """``ConfigError("unknown norm 'foo'; choose one of: l1, l2")``."""
    return ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(map(str, choices)))}")

"""The one exception type for failures a user can fix: the command-line entry points print its message as a single
`error: ...` line instead of a traceback (see :mod:`vidtok.cli`).

The subclasses also derive from the builtin a caller would catch for that kind of failure (`ValueError`,
`ImportError`, `OSError`), so code written against the builtins keeps working."""


class VidTokError(Exception):
    """A failure caused by the user's input (a file, a flag, a config value). The message names the file or value
    and says what to do about it; it is the whole of what the user sees."""


class ConfigError(VidTokError, ValueError):
    """A config file, config value or command-line setting that cannot be used."""


class UnknownTargetError(VidTokError, ImportError):
    """A config `target:` that names nothing importable."""


class CheckpointError(VidTokError, ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not weights-only, unknown format)."""


class DataError(VidTokError, ValueError):
    """A data folder or meta CSV that lists no usable video."""


class OutputError(VidTokError, OSError):
    """An output path that cannot be written (a file where a folder is needed, no permission, no space)."""


class MissingFileError(VidTokError, FileNotFoundError):
    """An input file (config, checkpoint, data) that does not exist."""

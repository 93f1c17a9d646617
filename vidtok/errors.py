"""The one exception type for failures a user can fix: the command-line entry points print its message as a single
`error: ...` line instead of a traceback."""


class VidTokError(Exception):
    """A failure caused by the user's input (a file, a flag, a config value). The message names the file or value
    and says what to do about it; it is the whole of what the user sees."""

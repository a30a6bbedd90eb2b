"""The one exception type for user mistakes and unusable inputs."""


class MemjaxError(Exception):
    """A bad input or setting, reported by the CLI as one line and exit code 2."""

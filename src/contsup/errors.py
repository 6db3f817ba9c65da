"""The one exception type that the command line turns into a clean error line."""


class ContsupError(Exception):
    """A user-facing error (bad input, missing data, foreign checkpoint): the CLI prints it, exits 2."""

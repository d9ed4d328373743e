"""User-facing errors: raised for mistakes a user can fix, printed without a traceback by the CLI."""


class SSLKDError(Exception):
    """A problem the user can fix; the message says what was wrong and how to fix it."""


class ConfigError(SSLKDError):
    """A bad config key, value or flag."""


class DataError(SSLKDError):
    """Missing, corrupt or inconsistent data files, or an impossible split."""


class CheckpointError(SSLKDError):
    """A missing or incompatible checkpoint."""

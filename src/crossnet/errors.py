"""Error types. Every error crossnet reports to a user is a CrossnetError with a
one-line message; the CLI prints it as ``crossnet: error: <message>``."""


class CrossnetError(Exception):
    """Base class: a failure with a human-readable one-line message."""

    exit_code = 1


class ConfigError(CrossnetError):
    """Bad input: cluster file, CLI argument, CNI JSON. Message names the field."""

    exit_code = 2


class IpamError(CrossnetError):
    """Address space exhausted, address outside subnet, address taken."""


class ApplyError(CrossnetError):
    """Configuring the host failed (after rollback)."""

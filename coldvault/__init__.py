"""coldvault: offline, encrypted, verified archiving for a medical practice."""

__version__ = "0.1.0"

"""Logging and secret redaction; later also metrics and tracing."""

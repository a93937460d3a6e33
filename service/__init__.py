"""Introloop: closes the loop on business introductions."""

__version__ = "0.1.0"

"""Byte units, one definition for the whole package."""

MIB = 1024**2
GIB = 1024**3

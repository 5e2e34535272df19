"""Byte units, one definition for the whole package, and the one way to show GiB."""

MIB = 1024**2
GIB = 1024**3


def gib_figure(n: float, digits: int = 1) -> str:
    """Bytes as a figure of GiB, "3.2": for a column headed in GiB."""
    return f"{n / GIB:.{digits}f}"


def gib(n: float, digits: int = 1) -> str:
    """Bytes as GiB with the unit, "3.2 GiB": for a sentence."""
    return f"{gib_figure(n, digits)} GiB"

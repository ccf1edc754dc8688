"""The engine's one transformation (what the tests check)."""

from __future__ import annotations


def extract(name: str) -> str:
    """A raw listing name -> its canonical form."""
    return " ".join(name.split()).title()

"""The Sidelight agent, shipped as a binary in this wheel: run `sidelight` (or
`python -m sidelight`). `find_sidelight_bin()` returns the binary's path."""

from sidelight._find import find_sidelight_bin

__all__ = ["find_sidelight_bin"]

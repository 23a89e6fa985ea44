"""Emulation: the Mininet backbone (network), the controller run beside it (session), traffic."""

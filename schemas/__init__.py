"""Contracts shared by every side of a fedsilo federation: specs, wire messages, tensor codec.

Imports nothing else of fedsilo's.
"""

WIRE_VERSION = "1"

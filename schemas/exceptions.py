"""Errors raised while reading shared contracts.

SchemaError
├── TensorFormatError   a tensor payload is not what the receiver expected
└── SpecError           a run, model or strategy spec is invalid
"""


class SchemaError(ValueError):
    """Base class for errors in shared contracts."""


class TensorFormatError(SchemaError):
    """A tensor payload does not decode, or does not match the expected names, shapes or dtype."""


class SpecError(SchemaError):
    """A specification (run, model, strategy) is inconsistent."""

"""User-facing errors.

Anything the user can fix (bad input file, unknown model name, bad recipe key) raises
:class:`SumrlError`. The CLI catches it and prints one line ``error: ...`` with exit code 2,
never a traceback. Code deep inside torch/transformers should be guarded by callers that
convert failures into a SumrlError naming the file, line and field.
"""

from __future__ import annotations


class SumrlError(Exception):
    """An error caused by user input; printed as one line by the CLI."""


class DataError(SumrlError):
    """Bad data: names the file, the line/row and the field."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(SumrlError):
    """Bad configuration (unknown recipe key, wrong type, bad flag value)."""


class ModelNotFoundError(SumrlError):
    """A --model spec that resolves to nothing loadable."""


class TrainingDiverged(SumrlError):
    """Loss became NaN/inf or KL exploded; the last good checkpoint is kept."""

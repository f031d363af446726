"""A SQL WHERE clause built a condition at a time, its arguments numbered $1, $2, ... as they come
(the searches of events, duties and catalog changes)."""

from __future__ import annotations

from typing import Any


class Conditions:
    def __init__(self, first: str, *args: Any) -> None:
        """`first`: the condition every query starts with (the tenant's), `args` its arguments."""
        self.parts = [first]
        self.args = list(args)

    def arg(self, value: Any) -> str:
        """`value` as the next numbered argument."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str) -> None:
        self.parts.append(condition)

    def equal(self, column: str, value: Any) -> None:
        """`column = value`, unless `value` is None (no filter)."""
        if value is not None:
            self.add(f"{column} = {self.arg(value)}")

    def copy(self) -> Conditions:
        other = Conditions(self.parts[0])
        other.parts, other.args = list(self.parts), list(self.args)
        return other

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)

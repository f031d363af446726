"""Duties: what the law requires after an act, with a due date and proof of fulfilment (docs/duties.md)."""

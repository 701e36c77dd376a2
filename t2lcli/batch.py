"""Old import path of `t2lcli.descriptions` (descriptions read from a batch file and checked line by line), kept for
code outside the package."""

from t2lcli.descriptions import (
    MAX_DESCRIPTION_CHARS,
    MAX_LINE_BYTES,
    MAX_NAME,
    BadLine,
    Item,
    NameAllocator,
    description_problem,
    iter_items,
    slugify,
    valid_text,
)

__all__ = ["MAX_DESCRIPTION_CHARS", "MAX_LINE_BYTES", "MAX_NAME", "BadLine", "Item", "NameAllocator", "description_problem", "iter_items",
           "slugify", "valid_text"]

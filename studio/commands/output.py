"""Output shared by commands that report on several inputs (`analyze`, `verify-watermark`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any


def print_entries(
    entries: Sequence[dict[str, Any]], as_json: bool, print_entry: Callable[[dict], None]
) -> int:
    """Print one entry per input, as a JSON array or lines; exit code 1 if any input failed."""
    if as_json:
        print(json.dumps(list(entries), indent=2, ensure_ascii=False))
    else:
        for entry in entries:
            print_entry(entry)
    return 1 if any(e["error"] for e in entries) else 0

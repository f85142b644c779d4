"""Output shared by commands that report on several inputs (`analyze`, `verify-watermark`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any


def print_entries(
    entries: Sequence[dict[str, Any]], as_json: bool, print_entry: Callable[[dict], None]
) -> int:
    """Print one entry per input, as a JSON array or lines; exit code 1 if any input failed,
    with one line on stderr that says how many."""
    if as_json:
        print(json.dumps(list(entries), indent=2, ensure_ascii=False))
    else:
        for entry in entries:
            print_entry(entry)
    failed = [e["path"] for e in entries if e["error"]]
    if not failed:
        return 0
    print(
        f"error: {len(failed)} of {len(entries)} input(s) could not be read "
        f"({', '.join(failed)}); see each one's error above",
        file=sys.stderr,
    )
    return 1

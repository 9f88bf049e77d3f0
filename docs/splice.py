"""`make docs`: put generated text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers.

python docs/splice.py README.md settings "$(python -m jobqueue.settings)"
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def splice(text: str, name: str, content: str) -> str:
    """`text` with the block between NAME's markers replaced by `content`."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no <!-- {name}:begin/end --> markers")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(2), text)


def block(text: str, name: str) -> str:
    """What stands between NAME's markers."""
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    return match.group(1) if match else ""


if __name__ == "__main__":
    path, name, content = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    path.write_text(splice(path.read_text(), name, content))

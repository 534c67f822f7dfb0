"""Generate ``src/bulkreset/data/demo-members.csv``, the invented directory of ``bulkreset demo``.

Deterministic (seeded): running it again writes the same bytes. Every name,
address and phone number is invented; ``.example`` domains (RFC 2606) and
numbers from the fictional ``555-0100``-``555-0199`` range (``+1 202 555 01xx``)
are used throughout.

Usage::

    python scripts/make_demo_data.py [OUTPUT.csv]
"""

from __future__ import annotations

import csv
import io
import random
import sys
import unicodedata
from pathlib import Path

from bulkreset._importing import NATIVE_COLUMNS

SEED = 20261130
OUTPUT = Path(__file__).resolve().parents[1] / "src" / "bulkreset" / "data" / "demo-members.csv"
COLUMNS = NATIVE_COLUMNS
FIRST = ["Ada", "Mina", "Jun", "Sofia", "Liam", "Noah", "Emma", "Hana", "Yuki", "Omar", "Lena"]
LAST = ["Kim", "Park", "Tanaka", "Garcia", "Smith", "Nguyen", "Silva", "Novak", "Haddad"]

# The odd cases the demo shows, in this order; the rest are plain members.
SPECIAL = [
    {"name": "Ada Admin", "role": "admin"},
    {"name": "Sam Super", "role": "super_admin"},
    {"name": "Quinn Quick", "sign_in": "quick_login"},
    {"name": "Pat Pending", "status": "pending"},
    {"name": "Sue Suspended", "status": "suspended"},
    {"name": "Nora Nocontact", "contact": "none"},
    {"name": "Zoë Ødegaard"},
    {"name": "김민지", "login": "minji.kim"},
    {"name": "Noel Nocontact", "contact": "none"},
]
TOTAL = 30


def _ascii_login(name: str) -> str:
    """``Zoë Ødegaard`` -> ``zoe.odegaard``."""
    folded = unicodedata.normalize("NFKD", name.replace("Ø", "O").replace("ø", "o"))
    letters = "".join(c for c in folded if c.isascii() and (c.isalnum() or c == " "))
    return ".".join(letters.lower().split())


def rows(seed: int = SEED) -> list[dict[str, str]]:
    """The demo directory as CSV rows."""
    rng = random.Random(seed)
    people = list(SPECIAL)
    while len(people) < TOTAL:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if all(p["name"] != name for p in people):
            people.append({"name": name})
    result = []
    for number, person in enumerate(people, start=1):
        login = person.get("login") or _ascii_login(person["name"])
        contact = person.get("contact") or rng.choice(["phone", "email", "both"])
        phone = f"+1202555{100 + number:04d}" if contact in ("phone", "both") else ""
        email = f"{login}@home.example" if contact in ("email", "both") else ""
        result.append(
            {
                "member_id": f"d{number:03d}",
                "login_id": f"{login}@corp.example",
                "name": person["name"],
                "sign_in": person.get("sign_in", "password"),
                "mobile_phone": phone,
                "personal_email": email,
                "status": person.get("status", "active"),
                "role": person.get("role", "member"),
            }
        )
    return result


def render(seed: int = SEED) -> str:
    """The CSV text (UTF-8, ``\\n`` line ends)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(seed))
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else OUTPUT
    output.write_text(render(), encoding="utf-8", newline="")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run the reference admin page on the demo directory: ``python -m examples.admin_web``.

Serves http://127.0.0.1:8000/ over a SQLite file (a temporary one unless
``--db PATH`` is given), filled with the invented directory ``bulkreset
demo`` uses, acting as its administrator Ada Admin (``d001``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bulkreset.adapters.sqlite import open_service

from .app import create_app, load_demo_members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="the SQLite file (default: a new temporary one)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    path = args.db or str(Path(tempfile.mkdtemp(prefix="bulkreset-admin-")) / "members.db")
    service = open_service(path)
    service.store.add_members(load_demo_members())  # type: ignore[attr-defined]
    print(f"members in {path}; open http://127.0.0.1:{args.port}/")
    create_app(service, actor="d001").run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()

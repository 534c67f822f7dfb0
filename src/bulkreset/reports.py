"""Per-member apply reports, as the command writes them: CSV or JSON, never a secret.

Columns: ``member_id``, ``login_id``, ``outcome``, ``reason``,
``sessions_revoked``, ``notified``. A CSV cell a spreadsheet would run as a
formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return)
gets a leading ``'`` (OWASP, "CSV Injection")::

    from bulkreset.reports import report_csv, write_report

    write_report("result.csv", result, plan=plan)     # a file (.csv or .json)
    text = report_csv(result, plan=plan)              # a web download
"""

from ._report import COLUMNS, report_csv, report_rows, safe_cell, write_report

__all__ = ["COLUMNS", "report_csv", "report_rows", "safe_cell", "write_report"]

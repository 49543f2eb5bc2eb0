"""The verification report: which op passed which check on which device and dtype.

``model`` holds the records (no pytest, no torch), ``terminal`` the table layout, ``formats`` the JSON,
Markdown and HTML files, ``coverage`` what the namespaces under test leave untested, and ``session``
the pytest hooks that gather results (merged across pytest-xdist workers) and write the report.
"""

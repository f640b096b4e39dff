"""`sumrl report`: one self-contained HTML file comparing evaluated systems (see docs/report.md)."""

from __future__ import annotations

__all__ = ["build_report"]


def __getattr__(name: str):
    # Lazy (PEP 562): `sumrl --help` imports this package only to register the `report` parser,
    # and must not pay for jinja2/matplotlib/the metric modules to do so.
    if name == "build_report":
        from sumrl.report.build import build_report

        return build_report
    raise AttributeError(f"module 'sumrl.report' has no attribute {name!r}")

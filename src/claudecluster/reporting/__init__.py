"""A run's report, shared by every way in: the CLI's export, the demo and the MCP resource.

It sits below all of them so that none borrows it from another.
"""

from claudecluster.reporting.run_report import (
    OUTCOME_COLOURS,
    fetch_diffstats,
    render_html,
    render_markdown,
    run_record,
)

__all__ = ["OUTCOME_COLOURS", "fetch_diffstats", "render_html", "render_markdown", "run_record"]

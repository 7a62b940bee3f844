"""Reading the kernel console: which lines say the kernel found itself in trouble.

This is the first cut of the crash oracle: it finds report lines and titles them by their
first line. (The full parser, with stable function+kind titles for deduplication, grows
from here.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The start of every kernel report kind we treat as a finding.
REPORT_START = re.compile(
    r"(WARNING: .*|BUG: .*|kernel BUG at .*|Oops: .*|general protection fault.*|"
    r"Kernel panic - not syncing: .*|BUG: Bad page (state|map).*|list_(add|del) corruption.*|"
    r"watchdog: BUG: soft lockup.*|INFO: task .* blocked for more than .*|"
    r"Watchdog detected hard LOCKUP.*)"
)
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


@dataclass(frozen=True)
class ConsoleReport:
    title: str
    text: str  # the report from its first line to the end of the console slice


def find_reports(console: str) -> list[ConsoleReport]:
    lines = [TIMESTAMP.sub("", line) for line in console.splitlines()]
    reports = []
    for index, line in enumerate(lines):
        match = REPORT_START.search(line)
        if match:
            reports.append(ConsoleReport(title=match.group(0).strip(),
                                         text="\n".join(lines[index:index + 80])))
    return reports

"""``claudecluster events ...``: the catalogue for external tools."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from claudecluster.cli.app import EXIT_FAILED, EXIT_OK, events_app
from claudecluster.events.schema import render_schemas

__all__ = ["schema", "write_schemas"]


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every schema under ``out_dir`` and delete stale ones; return the paths written.

    Raises:
        OSError: the directory cannot be written.
    """
    rendered = render_schemas()
    written: list[Path] = []
    for rel, text in rendered.items():
        target = out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    for stale in sorted(out_dir.rglob("*.json")):
        if stale.relative_to(out_dir).as_posix() not in rendered:
            stale.unlink()
    return written


@events_app.command
def schema(out: Path = Path("events/schema"), *, check: bool = False) -> int:
    """Write a JSON Schema for every event, command and envelope.

    Examples:
        claudecluster events schema
        claudecluster events schema --out /tmp/schemas
        claudecluster events schema --check   # exit 1 when the files are stale

    Args:
        out: Directory to write into (created if missing).
        check: Write nothing; report stale, missing or extra files and exit 1 if any.
    """
    console = Console(highlight=False, soft_wrap=True)
    if not check:
        written = write_schemas(out)
        console.print(f"wrote {len(written)} schema files to {out}", markup=False)
        return EXIT_OK
    expected = render_schemas()
    problems: list[str] = []
    for rel, text in sorted(expected.items()):
        target = out / rel
        if not target.is_file():
            problems.append(f"missing {target}")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"stale {target}")
    if out.is_dir():
        for extra in sorted(out.rglob("*.json")):
            if extra.relative_to(out).as_posix() not in expected:
                problems.append(f"extra {extra}")
    for problem in problems:
        console.print(problem, markup=False)
    if problems:
        console.print("run 'claudecluster events schema' to regenerate", markup=False)
        return EXIT_FAILED
    console.print(f"{len(expected)} schema files are current", markup=False)
    return EXIT_OK

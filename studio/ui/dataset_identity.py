"""The Dataset tab's likeness block: each photo's distance to the set's identity.

The outlier sentences themselves are image warnings of the quality report (shown in the tab's
Images list); this block adds the per-photo table so every distance is visible, not only the
flagged ones.
"""

from __future__ import annotations

from typing import Any

from studio.identity.engine import SAME_PERSON


def _verdict(im: dict[str, Any], outliers: set[str]) -> str:
    d = im.get("identity_distance")
    if d is None:
        return "no face found" if not im.get("faces") else "not measured"
    if im.get("file") in outliers:
        return "⚠️ someone else?"
    return "✅ same person" if d < SAME_PERSON else "far from the others"


def identity_markdown(report: dict[str, Any]) -> str:
    """The likeness table of a quality report; "" for reports made without identity checks."""
    ident = report.get("identity")
    if not isinstance(ident, dict):
        return ""
    outliers = set(ident.get("outliers") or [])
    head = (f"**One person?** Distance of each face to the set's identity ({ident.get('engine')} "
            f"face embeddings; same person is below {ident.get('same_person_below', SAME_PERSON)})"
            "\n\n| photo | source | faces | distance | |\n| --- | --- | --- | --- | --- |")
    rows = []
    for im in report.get("images", []):
        d = im.get("identity_distance")
        source = str(im.get("source", "")).replace("|", "\\|")
        rows.append(f"| {im.get('file')} | {source} | {im.get('faces', '')} | "
                    f"{'-' if d is None else f'{d:.2f}'} | {_verdict(im, outliers)} |")
    return "\n".join([head, *rows])

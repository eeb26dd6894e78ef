"""`capillary apply -f POLICY --dry-run`: what applying the policies in a file would change,
asked of policyd (policy.preview), with nothing written."""
from __future__ import annotations

import sys

from services.cli.client import Client
from services.cli.objects import KINDS, read_documents
from services.cli.output import dump
from services.runtime.bus import ServiceError
from services.wire import subjects
from services.wire.messages import INVALID, PolicyPreview, PolicyPreviewRequest


async def dry_run(client: Client, source: str, output: str) -> int:
    """Every document must be a policy; each is previewed against what is in force now (not
    on top of the others in the file)."""
    docs = read_documents(source)
    for doc in docs:
        if KINDS[(doc.api_version, doc.kind)].apply != subjects.POLICY_APPLY:
            raise ServiceError(INVALID, f"{doc.label}: --dry-run previews policies only, not {doc.kind}")
    previews = []
    for doc in docs:
        result = await client.call(subjects.POLICY_PREVIEW, PolicyPreviewRequest(doc.body), timeout=60)
        previews.append(PolicyPreview.from_wire(result))
        for warning in previews[-1].warnings:
            print(f"Warning: {warning}", file=sys.stderr)
    if output == "json":
        items = [p.to_wire() for p in previews]
        print(dump(items[0] if len(items) == 1 else items, "json"))
        return 0
    for i, preview in enumerate(previews):
        if i:
            print()
        print("\n".join(text(preview)))
    if len(previews) > 1:
        print("\n(each policy previewed against what is in force now, not on top of the others)")
    return 0


def text(p: PolicyPreview) -> list[str]:
    lines = [f"{p.kind.lower()}/{p.name} would be {p.action} (dry run: nothing written)"]
    if not p.affected:
        lines.append("no pod's policy entries would change")
        return lines
    lines.append(f"pods whose entries change: {', '.join(p.affected)}")
    lines.append(f"previewed: {', '.join(p.ports)} (the policy's ports, ICMP echo and recent flows' ports), "
                 "to and from every pod")
    changed = [c for c in p.cells if c.before.verdict != c.after.verdict]
    lines.append("")
    for c in changed:
        lines.append(f"{c.source} -> {c.destination} {c.protocol} {c.port}: "
                     f"{c.before.verdict} ({c.before.reason}) -> {c.after.verdict} ({c.after.reason})")
    lines.append(f"{len(changed)} of {len(p.cells)} cells change" if changed else
                 f"none of {len(p.cells)} cells changes")
    return lines

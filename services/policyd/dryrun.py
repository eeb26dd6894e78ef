"""policy.preview: plan an apply exactly as apply_policy plans it (parse, stage: CIDR
identities, compile, capacity), then, instead of storing and writing, compare the map's
entries with what the apply would make them (services.policyd.preview).

Nothing is written: no KV put, no map write, no identity allocated or announced; the staged
change is dropped. What it needs from other services is read first (pod names from
endpointd, recent connections' ports from flowd's history); an unreachable endpointd is an
error, an unreachable flowd a warning that only the policy's own ports are shown.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from services.policyd.parse import PolicyError, parse_policy
from services.policyd.preview import (Cell, PreviewTooLarge, State, apply_diffs, choose_ports,
                                      flow_ports, matrix, policy_ports)
from services.runtime.bus import RemoteError, ServiceError
from services.wire import subjects
from services.wire.messages import (EXHAUSTED, INVALID, FlowFilter, FlowQuery, ListRequest,
                                    PolicyPreview, PolicyPreviewRequest, PreviewCell, PreviewVerdict)

if TYPE_CHECKING:
    from services.policyd.service import PolicyService

RECENT_VERDICTS = 1000          # policy-verdict flows asked of flowd: one per new connection


async def preview(service: "PolicyService", req: PolicyPreviewRequest) -> PolicyPreview:
    try:
        policy = parse_policy(req.document).policy
    except PolicyError as exc:
        raise ServiceError(INVALID, str(exc)) from None
    names = await _pod_names(service)
    flows, warnings = await _recent_verdicts(service)
    async with service._lock:
        await service._inflight.settled()
        current = service.policies.get(policy.key)
        action = "created" if current is None else \
            "unchanged" if current == policy and current.document == policy.document else "configured"
        staged = service._stage({**service.policies, policy.key: policy},
                                [policy] + ([current] if current is not None else []))
        entries = {ep: dict(e) for ep, e in service.enforcer.state.items()}
        endpoints = dict(service.enforcer.endpoints)
        before = State(entries, list(service.policies.values()),
                       {i: e.labels for i, e in service.identities.by_id.items()}, service.enforcer.enforcement)
    after = State(apply_diffs(entries, staged.diffs), list(staged.policies.values()),
                  {i: e.labels for i, e in staged.identities.by_id.items()}, before.enforcement)
    affected = {ep for ep, d in staged.diffs.items() if not d.empty}
    unnamed = sorted(set(endpoints) - set(names))
    if unnamed:
        warnings.append(f"endpoints {', '.join(map(str, unnamed))} are enforced but endpointd lists no pod "
                        "for them: their cells are not previewed")
    ports, left_out = choose_ports(policy_ports([policy] + ([current] if current else [])), flow_ports(flows))
    if left_out:
        warnings.append(f"{left_out} more protocol/port pairs seen in recent flows are not previewed "
                        f"(at most {len(ports)})")
    try:
        cells = await asyncio.to_thread(matrix, endpoints, names, affected, ports, before, after)
    except PreviewTooLarge as exc:
        raise ServiceError(EXHAUSTED, str(exc)) from None
    return PolicyPreview(policy.kind, policy.name, policy.namespace, action,
                         sorted(names.get(ep, f"endpoint {ep}") for ep in affected),
                         [f"{proto}/{port}" for proto, port in ports], [_wire(c) for c in cells], warnings)


def _wire(cell: Cell) -> PreviewCell:
    return PreviewCell(cell.source, cell.destination, cell.protocol, cell.port,
                       PreviewVerdict(cell.before.verdict, cell.before.reason),
                       PreviewVerdict(cell.after.verdict, cell.after.reason))


async def _pod_names(service: "PolicyService") -> dict[int, str]:
    """endpoint id -> namespace/pod, from endpointd (policyd's record has ids only)."""
    pods = await service.bus.request(subjects.POD_LIST, ListRequest(), timeout=10)
    return {p["status"]["endpoint_id"]: f"{p['spec']['namespace']}/{p['spec']['name']}" for p in pods}


async def _recent_verdicts(service: "PolicyService") -> tuple[list[dict], list[str]]:
    query = FlowQuery(last=RECENT_VERDICTS, filter=FlowFilter(type=["policy-verdict"]))
    try:
        reply = await service.bus.request(subjects.OBSERVER_FLOWS, query, timeout=10)
    except RemoteError as exc:
        return [], [f"recent flows are unknown ({exc.message}): only the policy's own ports are previewed"]
    return reply["flows"], []

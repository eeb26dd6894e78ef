"""policyd: security identities, policies (KV), its record of endpoints (KV) and the
per-endpoint policy map.

Locking: self._lock serialises every change to identities, policies, endpoints and the map,
so one compile-diff-write cycle sees one consistent state.

KV is the truth and the map follows it, so a crash at any point converges at the next start
(which plans from KV alone): every change is compiled and checked for capacity first
(nothing changed yet), then stored in KV (policy put or delete; endpoint sync or forget),
then written to the map. For a policy change, CIDR identities are persisted before the map
write and announced in the ipcache after it (removed ones leave the ipcache before their
entries go), so no packet carries an identity the policy entries do not know yet.

policyd learns endpoints only from endpointd's sync and forget requests; it never reads
endpointd's map. A KV bucket it cannot read stops the start-up (StateUnreadable): policyd
never plans from state it could not read.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from services.datapath import loader
from services.datapath.maps.policy import PolicyMap
from services.policyd.compiler import CIDR_LABEL, Endpoint, Universe, rule_id, rule_table
from services.policyd.enforcer import Enforcer, PolicyMapFull
from services.policyd import clustersync
from services.policyd.identity import RESERVED, Entry, IdentitiesExhausted, IdentityAllocator, labels_key
from services.policyd.model import Policy
from services.policyd.parse import PolicyError, parse_policy
from services.runtime.app import Service
from services.policyd.stored import load as load_stored
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import (EXHAUSTED, INVALID, NOT_FOUND, Apply, EndpointPolicy, Identity,
                                    IdentityAllocate, IdentityRelease, IpcacheDelete, IpcacheUpsert,
                                    ListRequest, ObjectRef, PolicyApplied, PolicyRule)


def _wire(entry: Entry) -> Identity:
    return Identity(entry.id, dict(entry.labels), sorted(entry.owners))


def _cidr(entry: Entry) -> str:
    return next(lbl[len(CIDR_LABEL):] for lbl in entry.labels if lbl.startswith(CIDR_LABEL))


def kv_key(policy_key: str) -> str:
    return re.sub(r"[^-_=.a-zA-Z0-9]", ".", policy_key.replace("/", "."))


def cidrs_of(policy: Policy) -> set[str]:
    out = set()
    for rule in policy.rules:
        for peer in rule.peers:
            if peer.cidr is not None:
                out.add(str(ipaddress.IPv4Network(peer.cidr)))
                out.update(str(ipaddress.IPv4Network(e)) for e in peer.except_)
    return out


class PolicyService(Service):
    NAME = "policyd"

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self.identities = IdentityAllocator()
        self.policies: dict[str, Policy] = {}
        self.broken: dict[str, tuple[str, str]] = {}   # policy key -> (KV key, problem)
        self.identity_gauge = Gauge("capillary_identities", "Allocated security identities",
                                    registry=self.registry)
        self.policy_gauge = Gauge("capillary_policies", "Policies in force", registry=self.registry)
        self.broken_gauge = Gauge("capillary_policies_broken", "Stored policies that no longer "
                                  "compile; their endpoints are held at default deny", registry=self.registry)
        self.writes = Counter("capillary_policy_map_writes", "Policy map entries written or removed",
                              ["op"], registry=self.registry)
        replicas = self.config.cluster.kv_replicas
        self.kv_ids = await self.bus.node_kv(subjects.BUCKET_IDENTITIES, replicas=replicas)
        self.kv_policies = await self.bus.kv(subjects.BUCKET_POLICIES, create=True, history=5, replicas=replicas)
        self.kv_endpoints = await self.bus.node_kv(subjects.BUCKET_POLICY_ENDPOINTS, replicas=replicas)
        self.remote_ids: dict[int, dict[str, str]] = {}     # other nodes' identities (a cluster)
        self.cluster_ids = None
        if self.config.cluster.enabled:
            self.cluster_ids = await clustersync.open_identities(self.bus, replicas)
        endpoints = await self._load()
        await asyncio.to_thread(loader.pin_maps, "policyd_maps.c", self.config)     # LLVM stays out
        self.enforcer = Enforcer(PolicyMap(Path(self.config.datapath.bpfRoot)), self.config.maps.policy,
                                 self.config.policy.enforcement, endpoints)
        await self._converge()
        self._gauges()
        b = self.bus
        await b.serve(subjects.IDENTITY_ALLOCATE, IdentityAllocate, self.allocate)
        await b.serve(subjects.IDENTITY_RELEASE, IdentityRelease, self.release)
        await b.serve(subjects.IDENTITY_LIST, ListRequest, self.list_identities)
        await b.serve(subjects.POLICY_APPLY, Apply, self.apply_policy)
        await b.serve(subjects.POLICY_DELETE, ObjectRef, self.delete_policy)
        await b.serve(subjects.POLICY_LIST, ListRequest, self.list_policies)
        await b.serve(subjects.POLICY_ENTRIES, EndpointPolicy, self.endpoint_entries)
        await b.serve(subjects.POLICY_ENDPOINT_SYNC, EndpointPolicy, self.endpoint_sync)
        await b.serve(subjects.POLICY_ENDPOINT_FORGET, EndpointPolicy, self.endpoint_forget)
        await b.serve(subjects.POLICY_RULES, ListRequest, self.list_rules)
        if self.cluster_ids is not None:
            self._cluster_sync = asyncio.create_task(clustersync.sync_loop(self))

    async def adopt_policies(self, stored: dict[str, dict]) -> None:
        """Put in force the policies the shared bucket holds (STORED: KV key -> document),
        when they differ from ours: another node applied or deleted one. The bucket's last
        write wins, so every node converges to the same revision."""
        async with self._lock:
            mine = {kv_key(p.key): p.document for p in self.policies.values()}
            if mine == stored:
                return
            universe = self._universe()
            wanted = {}
            for key, raw in sorted(stored.items()):
                loaded = load_stored(key, raw, universe)
                wanted[loaded.policy.key] = loaded.policy
            changed = [p for k, p in wanted.items() if self.policies.get(k) != p or
                       self.policies[k].document != p.document]
            changed += [p for k, p in self.policies.items() if k not in wanted or wanted[k] != p]
            written, removed = await self._commit(self._stage(wanted, changed))
        self._gauges()
        self.log.info("policies adopted from the cluster", policies=len(wanted), written=written, removed=removed)

    async def set_remote_identities(self, remote: dict[int, dict[str, str]]) -> None:
        async with self._lock:
            self.remote_ids = {i: labels for i, labels in remote.items() if i not in self.identities.by_id}
            diffs, _ = self.enforcer.plan(list(self.policies.values()), self._universe())
            self._write(diffs)

    async def _converge(self) -> None:
        """At start: make the map what KV says. Entries of endpoints missing from the record
        are removed, unless the record has never been written (a node upgraded from before
        policyd kept one): then they stay until endpointd announces its pods again."""
        async with self._lock:
            await self._sync_cidr_identities()
            only = None
            if not self.enforcer.endpoints and (await self.kv_endpoints.status()).values == 0:
                only = set()
                self.log.warning("no endpoint record yet: entries kept until endpointd announces its pods",
                                 endpoints_in_map=len(self.enforcer.state))
            diffs, _total = self.enforcer.plan(list(self.policies.values()), self._universe(), only=only)
            self._write(diffs)
            await self._announce(self._cidr_entries(self.identities).values())

    async def _load(self) -> dict[int, Endpoint]:
        """Identities, policies and the endpoint record from KV (raises StateUnreadable,
        having changed nothing, when a bucket cannot be read). A stored policy that no
        longer compiles is put in force as its fail-closed stand-in (policyd.stored)."""
        identities = await self.bus.kv_items(self.kv_ids)
        stored = await self.bus.kv_items(self.kv_policies)
        endpoints = await self.bus.kv_items(self.kv_endpoints)
        for raw in identities.values():
            ident = Identity.from_wire(raw)
            self.identities.restore(Entry(ident.id, ident.labels, set(ident.owners)))
        universe = self._universe()
        for key, raw in sorted(stored.items()):
            loaded = load_stored(key, raw, universe)
            self.policies[loaded.policy.key] = loaded.policy
            if loaded.problem is not None:
                self.broken[loaded.policy.key] = (key, loaded.problem)
                self.log.error("stored policy no longer compiles: its endpoints are held at default deny",
                               key=key, policy=loaded.policy.key, error=loaded.problem)
        out = {}
        for raw in endpoints.values():
            ep = EndpointPolicy.from_wire(raw)
            out[ep.endpoint_id] = Endpoint(ep.endpoint_id, ep.identity, ep.audit)
        return out

    @property
    def detail(self) -> str:
        if self._detail == "ok" and getattr(self, "broken", None):
            return (f"{len(self.broken)} stored policies no longer compile, their endpoints held at "
                    f"default deny: " + "; ".join(f"{k}: {p}" for k, (_, p) in sorted(self.broken.items())))
        return self._detail

    @detail.setter
    def detail(self, value: str) -> None:
        self._detail = value

    async def counters(self) -> dict[str, int]:
        out = {"identities": len(self.identities.by_id), "policies": len(self.policies),
               "policy_entries": self.enforcer.entry_count}
        if self.broken:                           # shown only when there is something to say
            out["policies_broken"] = len(self.broken)
        return out

    def _gauges(self) -> None:
        self.identity_gauge.set(len(self.identities.by_id))
        self.policy_gauge.set(len(self.policies))
        self.broken_gauge.set(len(self.broken))

    def _universe(self) -> Universe:
        return Universe({**self.remote_ids, **{i: e.labels for i, e in self.identities.by_id.items()}})

    def _write(self, diffs) -> tuple[int, int]:
        written, removed = self.enforcer.apply(diffs)
        self.writes.labels("write").inc(written)
        self.writes.labels("delete").inc(removed)
        return written, removed

    # ---- identities ------------------------------------------------------------------------

    async def _persist_identity(self, entry: Entry | None, identity: int) -> None:
        if entry is None or not entry.owners:
            await self.kv_ids.delete(str(identity))
        else:
            await self.kv_ids.put(str(entry.id), codec.encode(_wire(entry).to_wire()))

    async def allocate(self, req: IdentityAllocate) -> Identity:
        if not req.labels:
            raise ServiceError(INVALID, "labels: an identity needs at least one label")
        async with self._lock:
            try:
                number = None
                if self.cluster_ids is not None and labels_key(req.labels) not in self.identities.keys():
                    number, _ = await self.cluster_ids.allocate(req.labels)
                    self.remote_ids.pop(number, None)
                entry, created = self.identities.allocate(req.labels, req.owner, number=number)
            except IdentitiesExhausted as exc:
                raise ServiceError(EXHAUSTED, str(exc)) from None
            await self._persist_identity(entry, entry.id)
            if created:
                # Other endpoints' rules may select the new identity: in force before it exists.
                diffs, _ = self.enforcer.plan(list(self.policies.values()), self._universe())
                self._write(diffs)
        self._gauges()
        return _wire(entry)

    async def release(self, req: IdentityRelease) -> dict:
        async with self._lock:
            gone = self.identities.release(req.identity, req.owner)
            await self._persist_identity(self.identities.by_id.get(req.identity), req.identity)
            if gone is not None:
                diffs, _ = self.enforcer.plan(list(self.policies.values()), self._universe())
                self._write(diffs)
        self._gauges()
        return {"released": gone is not None}

    async def list_identities(self, _req: ListRequest) -> list[Identity]:
        reserved = [Identity(i, {name: ""}) for i, name in RESERVED.items()]
        return reserved + [_wire(e) for _, e in sorted(self.identities.by_id.items())]

    def _cidr_entries(self, allocator: IdentityAllocator) -> dict[str, Entry]:
        return {lbl[len(CIDR_LABEL):]: e for e in allocator.by_id.values()
                for lbl in e.labels if lbl.startswith(CIDR_LABEL)}

    def _resolve_cidrs(self, allocator: IdentityAllocator, policies: dict[str, Policy]
                       ) -> tuple[list[Entry], list[Entry]]:
        """Give ALLOCATOR one local identity per CIDR POLICIES name and release the rest.
        Returns (released, created). Pure: the caller persists and announces."""
        wanted = set().union(*(cidrs_of(p) for p in policies.values())) if policies else set()
        have = self._cidr_entries(allocator)
        released = [have[c] for c in sorted(set(have) - wanted)]
        for entry in released:
            allocator.release(entry.id, "policies")
        created = []
        for cidr in sorted(wanted - set(have)):
            entry, _ = allocator.allocate({f"{CIDR_LABEL}{cidr}": ""}, "policies", local=True)
            created.append(entry)
        return released, created

    async def _sync_cidr_identities(self) -> None:
        released, created = self._resolve_cidrs(self.identities, self.policies)
        for entry in released:
            await self.bus.request(subjects.IPCACHE_DELETE, IpcacheDelete(_cidr(entry), "cidr-policy"))
            await self._persist_identity(None, entry.id)
        for entry in created:
            await self._persist_identity(entry, entry.id)

    async def _announce(self, entries) -> None:
        for entry in entries:
            await self.bus.request(subjects.IPCACHE_UPSERT, IpcacheUpsert(_cidr(entry), entry.id, "cidr-policy"))

    # ---- policies -----------------------------------------------------------------------------

    def _stage(self, policies: dict[str, Policy], changed: list[Policy]) -> "_Staged":
        """Plan making POLICIES the ones in force, or raise; changes nothing. CHANGED holds
        the old and new versions of what differs: only endpoints they select are
        recompiled, unless the set of CIDR identities changes (then every endpoint is)."""
        trial = self.identities.copy()
        released, created = self._resolve_cidrs(trial, policies)
        universe = Universe({**self.remote_ids, **{i: e.labels for i, e in trial.by_id.items()}})
        try:
            diffs, total = self.enforcer.plan(list(policies.values()), universe,
                                              None if released or created else changed)
            self.enforcer.check_capacity(total)
        except (PolicyMapFull, IdentitiesExhausted) as exc:
            raise ServiceError(EXHAUSTED, str(exc)) from None
        return _Staged(policies, trial, released, created, diffs)

    async def _commit(self, staged: "_Staged") -> tuple[int, int]:
        """Put a staged change in force; the policy itself is already in KV."""
        # Removed CIDRs leave the ipcache before their entries go; new ones join it after.
        for entry in staged.released:
            await self.bus.request(subjects.IPCACHE_DELETE, IpcacheDelete(_cidr(entry), "cidr-policy"))
            await self._persist_identity(None, entry.id)
        for entry in staged.created:
            await self._persist_identity(entry, entry.id)
        self.identities, self.policies = staged.identities, staged.policies
        written, removed = self._write(staged.diffs)
        await self._announce(staged.created)
        return written, removed

    async def apply_policy(self, req: Apply) -> PolicyApplied:
        try:
            parsed = parse_policy(req.document)
        except PolicyError as exc:
            raise ServiceError(INVALID, str(exc)) from None
        policy = parsed.policy
        async with self._lock:
            current = self.policies.get(policy.key)
            if current is not None and req.create_only:
                raise ServiceError("exists", f"{policy.kind} {policy.key} already exists")
            if current is not None and current == policy and current.document == policy.document:
                entry = await self.kv_policies.get(kv_key(policy.key))
                return PolicyApplied(policy.kind, policy.name, policy.namespace, "unchanged",
                                     entry.revision, parsed.warnings)
            changed = [policy] + ([current] if current is not None else [])
            staged = self._stage({**self.policies, policy.key: policy}, changed)
            revision = await self.kv_policies.put(kv_key(policy.key), codec.encode(policy.document))
            self.broken.pop(policy.key, None)
            written, removed = await self._commit(staged)
        self._gauges()
        self.log.info("policy applied", policy=policy.key, written=written, removed=removed)
        return PolicyApplied(policy.kind, policy.name, policy.namespace,
                             "configured" if current else "created", revision, parsed.warnings,
                             written, removed)

    def _find(self, req: ObjectRef) -> Policy:
        for policy in self.policies.values():
            if policy.name == req.name and (not req.object_kind or policy.kind == req.object_kind) and \
                    (policy.namespace == (req.namespace or ("" if policy.kind.startswith("CiliumClusterwide") else "default"))):
                return policy
        raise ServiceError(NOT_FOUND, f'policy "{req.namespace + "/" if req.namespace else ""}{req.name}" not found')

    async def delete_policy(self, req: ObjectRef) -> PolicyApplied:
        async with self._lock:
            policy = self._find(req)
            rest = {k: p for k, p in self.policies.items() if k != policy.key}
            staged = self._stage(rest, [policy])
            stored_at = self.broken.get(policy.key, (kv_key(policy.key), ""))[0]
            revision = await self.kv_policies.delete(stored_at)
            self.broken.pop(policy.key, None)
            written, removed = await self._commit(staged)
        self._gauges()
        return PolicyApplied(policy.kind, policy.name, policy.namespace, "deleted", revision or 0, [],
                             written, removed)

    async def list_policies(self, _req: ListRequest) -> list[dict]:
        return [p.document for _, p in sorted(self.policies.items())]

    async def list_rules(self, _req: ListRequest) -> list[PolicyRule]:
        """Every rule in force, by the rule_id its map entries (and flows) carry."""
        return [PolicyRule(rule_id(p, r), p.kind, p.name, p.namespace, r.direction, r.deny, r.index)
                for _, p in sorted(self.policies.items()) for r in p.rules]

    # ---- endpoints ----------------------------------------------------------------------------

    async def endpoint_sync(self, req: EndpointPolicy) -> dict:
        """endpointd announces an endpoint before its first packet (and again for every pod it
        restores at its start): record it in KV, then write its entries."""
        ep = Endpoint(req.endpoint_id, req.identity, req.audit)
        async with self._lock:
            record = self.enforcer.endpoints
            before = record.get(ep.endpoint_id)
            record[ep.endpoint_id] = ep
            try:
                diffs, total = self.enforcer.plan(list(self.policies.values()), self._universe(),
                                                  only={ep.endpoint_id})
                self.enforcer.check_capacity(total)
                if before != ep:
                    await self.kv_endpoints.put(str(ep.endpoint_id), codec.encode(req.to_wire()))
            except BaseException as exc:
                _restore(record, ep.endpoint_id, before)
                if isinstance(exc, PolicyMapFull):
                    raise ServiceError(EXHAUSTED, str(exc)) from None
                raise
            written, _ = self._write(diffs)
        return {"written": written}

    async def endpoint_forget(self, req: EndpointPolicy) -> dict:
        """endpointd removed an endpoint: drop it from the record in KV, then its entries."""
        async with self._lock:
            record = self.enforcer.endpoints
            if req.endpoint_id in record:
                await self.kv_endpoints.delete(str(req.endpoint_id))
                del record[req.endpoint_id]
            diffs, _ = self.enforcer.plan(list(self.policies.values()), self._universe(),
                                          only={req.endpoint_id})
            _, removed = self._write(diffs)
        return {"removed": removed}

    async def endpoint_entries(self, req: EndpointPolicy) -> list[dict]:
        rules = rule_table(list(self.policies.values()))
        out = []
        for key, counted in sorted(self.enforcer.entries(req.endpoint_id).items()):
            entry = self.identities.by_id.get(key.identity)
            labels = {RESERVED[key.identity]: ""} if key.identity in RESERVED else \
                (dict(entry.labels) if entry else {})
            info = rules.get(counted.value.rule_id)
            out.append({"direction": "egress" if key.egress else "ingress", "identity": key.identity,
                        "labels": labels,
                        "protocol": key.protocol, "port": key.port, "prefixlen": key.prefixlen,
                        "flags": counted.value.flags, "match_type": counted.value.match_type,
                        "packets": counted.packets, "bytes": counted.bytes,
                        "rule": None if info is None else {"policy": info.policy, "direction": info.direction,
                                                           "deny": info.deny, "index": info.index}})
        return out



def _restore(record: dict, key, before) -> None:
    if before is None:
        record.pop(key, None)
    else:
        record[key] = before


@dataclass(frozen=True)
class _Staged:
    """A planned policy change, checked and not yet in force."""

    policies: dict[str, Policy]
    identities: IdentityAllocator
    released: list[Entry]
    created: list[Entry]
    diffs: dict

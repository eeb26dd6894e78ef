"""policyd: security identities, policies (KV), its record of endpoints (KV) and the
per-endpoint policy map.

Locking: self._lock serialises every change to identities, policies and endpoints, so one
compile-diff cycle sees one consistent state. A policy change writes the map after letting
it go (services.policyd.changes, services.policyd.inflight); everything else that plans
under it first waits for such writes to be done.

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
import dataclasses
import re
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.datapath import loader
from services.datapath.maps.policy import PolicyMap
from services.policyd import cidrs, dryrun
from services.policyd.changes import IPCACHE_TIMEOUT, Changes
from services.policyd.inflight import InFlight
from services.policyd.staging import ChangeLog, Staged
from services.policyd import staging
from services.policyd import metrics as policyd_metrics
from services.policyd.compiler import CIDR_LABEL, Endpoint, Universe, names_as_peer, rule_id, rule_table
from services.policyd.enforcer import Enforcer, PolicyMapFull
from services.policyd import clustersync
from services.policyd.identity import RESERVED, Entry, IdentitiesExhausted, IdentityAllocator, labels_key, listing
from services.policyd.model import PackedDocument, Policy, plain_document
from services.policyd.parse import PolicyError, parse_policy, policy_key_of
from services.runtime.app import Service
from services.policyd.stored import load as load_stored
from services.runtime.bus import ServiceError
from services.runtime.gil import off_loop_if_large, size_of
from services.runtime.config import NodeConfig
from services.wire import codec, subjects
from services.wire.messages import (EXHAUSTED, INTERNAL, INVALID, NOT_FOUND, Apply, EndpointPolicy, Identity,
                                    IdentityAllocate, IdentityRelease, ListRequest, ObjectRef,
                                    Plain, PolicyApplied, PolicyPreviewRequest, PolicyRule)



def _wire(entry: Entry) -> Identity:
    return Identity(entry.id, dict(entry.labels), sorted(entry.owners))


def kv_key(policy_key: str) -> str:
    return re.sub(r"[^-_=.a-zA-Z0-9]", ".", policy_key.replace("/", "."))


class PolicyService(Changes, Service):
    NAME = "policyd"

    def __init__(self, config: NodeConfig, registry: CollectorRegistry | None = None) -> None:
        super().__init__(config, registry)
        self.remote_ids: dict[int, dict[str, str]] = {}     # other nodes' identities (a cluster)
        self.cluster_ids = None                             # their numbers' allocator (a cluster)

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
        if self.config.cluster.enabled:
            self.cluster_ids = await clustersync.open_identities(self.bus, replicas)
        endpoints = await self._load()
        await asyncio.to_thread(loader.pin_maps, "policyd_maps.c", self.config)     # LLVM stays out
        self.enforcer = Enforcer(PolicyMap(Path(self.config.datapath.bpfRoot)), self.config.maps.policy,
                                 self.config.policy.enforcement, endpoints)
        self.delay = policyd_metrics.register(self, self.registry, lambda: self.enforcer.entry_count)
        await self._converge()
        self._gauges()
        b = self.bus
        await b.serve(subjects.IDENTITY_ALLOCATE, IdentityAllocate, self.allocate)
        await b.serve(subjects.IDENTITY_RELEASE, IdentityRelease, self.release)
        await b.serve(subjects.IDENTITY_LIST, ListRequest, self.list_identities)
        # Concurrent: a large apply must not hold up small ones to other policies (_change).
        await b.serve(subjects.POLICY_APPLY, Apply, self.apply_policy, concurrent=True, order_key=_applied_key)
        await b.serve(subjects.POLICY_DELETE, ObjectRef, self.delete_policy, concurrent=True)
        await b.serve(subjects.POLICY_LIST, ListRequest, self.list_policies)
        await b.serve(subjects.POLICY_ENTRIES, EndpointPolicy, self.endpoint_entries)
        await b.serve(subjects.POLICY_ENDPOINT_SYNC, EndpointPolicy, self.endpoint_sync)
        await b.serve(subjects.POLICY_ENDPOINT_FORGET, EndpointPolicy, self.endpoint_forget)
        await b.serve(subjects.POLICY_RULES, ListRequest, self.list_rules)
        await b.serve(subjects.POLICY_PREVIEW, PolicyPreviewRequest, lambda req: dryrun.preview(self, req))
        if self.cluster_ids is not None:
            self._cluster_sync = asyncio.create_task(clustersync.sync_loop(self))

    async def adopt_policies(self, stored: dict[str, dict], as_of: int) -> None:
        """Put in force the policies the shared bucket holds (STORED: KV key -> document, as
        read from revision AS_OF on), when they differ from ours: another node applied or
        deleted one. The bucket's last write wins, so every node converges to the same
        revision. A read begun before one of this node's own changes reached the bucket is
        not put in force: it would undo that change here until the next read. That change's
        write starts the next read (clustersync)."""
        async with self._lock:
            await self._inflight.settled()     # plans from a mirror no write is changing
            if as_of < self.policies_written:
                self.log.debug("a policy read older than this node's last change, not adopted",
                               read_at=as_of, written=self.policies_written)
                return
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
            staged = self._stage(wanted, changed)
            tail = await self._commit(staged)
        written, removed = await tail
        await cidrs.announce(self.bus, staged.created, [], IPCACHE_TIMEOUT)
        self._gauges()
        self.log.info("policies adopted from the cluster", policies=len(wanted), written=written, removed=removed)

    async def set_remote_identities(self, remote: dict[int, dict[str, str]]) -> None:
        async with self._lock:
            await self._inflight.settled()     # plans from a mirror no write is changing
            self.remote_ids = {i: labels for i, labels in remote.items() if i not in self.identities.by_id}
            diffs, _ = self.enforcer.plan(list(self.policies.values()), self._universe())
            self._write(diffs)

    async def _converge(self) -> None:
        """At start: make the map what KV says. Entries of endpoints missing from the record
        are removed, unless the record has never been written (a node upgraded from before
        policyd kept one): then they stay until endpointd announces its pods again."""
        async with self._lock:
            await self._inflight.settled()     # plans from a mirror no write is changing
            await self._sync_cidr_identities()
            only = None
            if not self.enforcer.endpoints and (await self.kv_endpoints.status()).values == 0:
                only = set()
                self.log.warning("no endpoint record yet: entries kept until endpointd announces its pods",
                                 endpoints_in_map=len(self.enforcer.state))
            diffs, _total = self.enforcer.plan(list(self.policies.values()), self._universe(), only=only)
            self._write(diffs)
            await cidrs.announce(self.bus, list(cidrs.cidr_entries(self.identities).values()), [],
                                 IPCACHE_TIMEOUT)

    async def _load(self) -> dict[int, Endpoint]:
        """Identities, policies and the endpoint record from KV (raises StateUnreadable,
        having changed nothing, when a bucket cannot be read). A stored policy that no
        longer compiles is put in force as its fail-closed stand-in (policyd.stored)."""
        identities = await self.bus.kv_items(self.kv_ids)
        stored = await self.bus.kv_items(self.kv_policies)
        endpoints = await self.bus.kv_items(self.kv_endpoints)
        self._legacy_cidr_keys: list[str] = []        # CIDR identities stored one a key, moved to shards
        self.policies_written = 0      # the policies bucket's revision after this node's last change
        self._changes = ChangeLog()    # what a staged policy change depends on
        self._inflight = InFlight()    # map writes under way outside self._lock
        self._universe_of: tuple[IdentityAllocator, int, Universe] | None = None
        for key, raw in identities.items():
            if key.startswith(cidrs.SHARD_PREFIX):
                cidrs.restore(self.identities, key, raw)
                continue
            ident = Identity.from_wire(raw)
            self.identities.restore(Entry(ident.id, ident.labels, set(ident.owners)))
            if any(label.startswith(CIDR_LABEL) for label in ident.labels):
                self._legacy_cidr_keys.append(key)
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
            problems = "; ".join(f"{k}: {p}" for k, (_, p) in sorted(self.broken.items()))
            return (f"{len(self.broken)} stored policies no longer compile, their endpoints held closed "
                    f"(default deny; deny-all where they had deny rules): {problems}")
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
        """The Universe of the identities in force (this node's, and other nodes' in a
        cluster), built again only when they changed (an allocator swapped in, an identity
        added or removed, or the remote ones replaced): its peer resolutions are reused across
        plans, as for each of 1,000 pods' endpoint syncs."""
        cached = getattr(self, "_universe_of", None)
        if cached is None or cached[0] is not self.identities or cached[1] != self.identities.generation \
                or cached[2] is not self.remote_ids:
            universe = _universe_of(self.remote_ids, self.identities)
            self._universe_of = (self.identities, self.identities.generation, self.remote_ids, universe)
        return self._universe_of[3]

    def _write(self, diffs, touched: frozenset[int] | None = None) -> tuple[int, int]:
        self._changes.bump(touched)
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
            await self._inflight.settled()     # plans from a mirror no write is changing
            self._changes.bump()       # what a staged policy change planned against
            try:
                number = None
                if self.cluster_ids is not None and labels_key(req.labels) not in self.identities.keys():
                    number, _ = await self.cluster_ids.allocate(req.labels)
                    self.remote_ids.pop(number, None)
                entry, created = self.identities.allocate(req.labels, req.owner, number=number)
            except IdentitiesExhausted as exc:
                raise ServiceError(EXHAUSTED, str(exc)) from None
            if created:
                # Other endpoints' rules may select the new identity: in force before it exists.
                try:
                    diffs, total = self._plan_peer(entry.labels)
                    self.enforcer.check_capacity(total)
                except PolicyMapFull as exc:
                    self.identities.release(entry.id, req.owner)
                    raise ServiceError(EXHAUSTED, str(exc)) from None
            await self._persist_identity(entry, entry.id)
            if created:
                self._write(diffs)
        self._gauges()
        return _wire(entry)

    async def release(self, req: IdentityRelease) -> dict:
        async with self._lock:
            await self._inflight.settled()     # plans from a mirror no write is changing
            self._changes.bump()       # what a staged policy change planned against
            gone = self.identities.release(req.identity, req.owner)
            await self._persist_identity(self.identities.by_id.get(req.identity), req.identity)
            if gone is not None:
                try:
                    diffs, _ = self._plan_peer(gone.labels)
                except PolicyMapFull as exc:       # the identity is gone; its entries stay till the next plan
                    raise ServiceError(EXHAUSTED, str(exc)) from None
                self._write(diffs)
        self._gauges()
        return {"released": gone is not None}

    def _plan_peer(self, labels: dict[str, str]):
        """The plan after a pod identity with LABELS came or went: only the endpoints of
        policies that can name it as a peer are compiled again (all of them made creating
        1,000 pods cost 1,000 x 1,000 compiles)."""
        naming = [p for p in self.policies.values() if names_as_peer(p, labels)]
        return self.enforcer.plan(list(self.policies.values()), self._universe(), changed=naming)

    async def list_identities(self, _req: ListRequest) -> Plain:
        """Every identity (Identity messages), put in wire form on a worker thread: with
        100,000 CIDR identities that is seconds of work, and flowd asks every 30 s."""
        entries = list(self.identities.by_id.values())         # snapshots; sorted off the loop
        remote = dict(self.remote_ids)
        return await asyncio.to_thread(lambda: Plain(m.to_wire() for m in listing(entries, remote)))

    async def _sync_cidr_identities(self) -> None:
        released, created = cidrs.resolve(self.identities, self.policies)
        await cidrs.announce(self.bus, [], released, IPCACHE_TIMEOUT)
        await cidrs.persist(self.kv_ids, self.identities, released + created, self._legacy_cidr_keys)
        self._legacy_cidr_keys = []

    # ---- policies -----------------------------------------------------------------------------

    def _stage(self, policies: dict[str, Policy], changed: list[Policy]) -> Staged:
        """Plan making POLICIES the ones in force, or raise; changes nothing. CHANGED holds
        the old and new versions of what differs: only endpoints they select are
        recompiled, and when the set of CIDR identities changes, those of the policies
        whose peers resolve differently because of it (staging.widen)."""
        base, remote = self.enforcer.committed, self.remote_ids
        try:
            # The identities in force, unless this change makes or drops CIDR identities.
            # (Should they change meanwhile, _change stages this again.)
            trial, released, created = cidrs.resolved(self.identities, policies)
            universe = _universe_of(remote, trial) if released or created else self._universe()
            only = self.enforcer.selected(staging.widen(changed, policies, released, created), universe)
            diffs, total = self.enforcer.plan(list(policies.values()), universe, only=only)
            self.enforcer.check_capacity(total)
        except (PolicyMapFull, IdentitiesExhausted) as exc:
            raise ServiceError(EXHAUSTED, str(exc)) from None
        return Staged(policies, trial, released, created, diffs, frozenset(only), total, base, (remote, universe))

    async def apply_policy(self, req: Apply) -> PolicyApplied:
        started = time.perf_counter()
        # The policy's lock is taken before it is parsed: changes to one policy are put in
        # force in the order they arrive, however long each takes to parse.
        arrival = policy_key_of(req.document)
        create_only, document = req.create_only, [req.document]
        del req                            # the body goes once parsed (the policy keeps it packed)
        async with self._policy_lock(arrival or ""):
            try:
                parsed = await off_loop_if_large(size_of(document[0]), parse_policy, document.pop(), True)
            except PolicyError as exc:
                raise ServiceError(INVALID, str(exc)) from None
            policy = parsed.policy
            if policy.key != arrival:
                raise ServiceError(INTERNAL, f"policy key {policy.key} was read as {arrival} before parsing")
            current = self.policies.get(policy.key)
            if current is not None and create_only:
                raise ServiceError("exists", f"{policy.kind} {policy.key} already exists")
            if current is not None and await off_loop_if_large(current.weight + policy.weight, _same, current, policy):
                entry = await self.kv_policies.get(kv_key(policy.key))
                return PolicyApplied(policy.kind, policy.name, policy.namespace, "unchanged",
                                     entry.revision, parsed.warnings)
            changed = [policy] + ([current] if current is not None else [])

            async def store() -> int:
                revision = await self.kv_policies.put(kv_key(policy.key), await _packed(policy))
                self.broken.pop(policy.key, None)
                return revision

            revision, written, removed = await self._change(
                lambda: {**self.policies, policy.key: policy}, changed, store)
        self._gauges()
        self.delay.labels(policyd_metrics.source(policy.kind)).observe(time.perf_counter() - started)
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
        started = time.perf_counter()
        async with self._policy_lock(self._find(req).key):
            policy = self._find(req)

            async def store() -> int:
                await self.kv_policies.delete(self.broken.get(policy.key, (kv_key(policy.key), ""))[0])
                self.broken.pop(policy.key, None)
                # The client does not return the delete marker's revision: the bucket's
                # revision just after it (the marker's, unless another write came between).
                return (await self.kv_policies.status()).stream_info.state.last_seq

            revision, written, removed = await self._change(
                lambda: {k: p for k, p in self.policies.items() if k != policy.key}, [policy], store)
        self._gauges()
        self.delay.labels(policyd_metrics.source(policy.kind)).observe(time.perf_counter() - started)
        return PolicyApplied(policy.kind, policy.name, policy.namespace, "deleted", revision, [],
                             written, removed)

    # ---- one policy change, without holding up the others -----------------------------------

    def _policy_lock(self, key: str) -> asyncio.Lock:
        """The lock of one policy key: its applies and deletes run one at a time, in arrival
        order. Lock order: a policy's lock, then self._lock (never the other way round)."""
        locks = self.__dict__.setdefault("_policy_locks", {})
        return locks.setdefault(key, asyncio.Lock())

    async def list_policies(self, _req: ListRequest) -> list[dict]:
        return [plain_document(p.document) for _, p in sorted(self.policies.items())]

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
            await self._inflight.settled()     # plans from a mirror no write is changing
            self._changes.bump()       # what a staged policy change planned against
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
            await self._inflight.settled()     # plans from a mirror no write is changing
            self._changes.bump()       # what a staged policy change planned against
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



def _applied_key(data: bytes) -> str | None:
    """The key of the policy an Apply body changes, read without decoding the body: applies
    to one policy start in the order they arrive, the others do not wait for its decode."""
    return policy_key_of(codec.peek(data, ("document",), ("kind", "metadata")))


async def _packed(policy: Policy) -> bytes:
    """POLICY's document as KV stores it (encoded on a worker thread: 4 MB at 100,000 peers)."""
    if isinstance(policy.document, PackedDocument):
        return policy.document.raw
    return await off_loop_if_large(policy.weight, codec.encode, policy.document)


def _universe_of(remote: dict[int, dict[str, str]], identities: IdentityAllocator) -> Universe:
    known = dict(remote)
    known.update((i, e.labels) for i, e in identities.by_id.items())
    return Universe(known)


def _same(a: Policy, b: Policy) -> bool:
    return a == b and a.document == b.document


def _restore(record: dict, key, before) -> None:
    if before is None:
        record.pop(key, None)
    else:
        record[key] = before

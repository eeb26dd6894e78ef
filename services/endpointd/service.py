"""endpointd: namespaces, pods and their kernel plumbing, IPAM, the endpoint map and the
from_container program on every host-side veth.

Locking: every mutation (apply, delete, reconcile) holds self._lock, so the in-memory view
(self.pods, self.namespaces, IPAM, endpoint ids) and KV change together. Kernel work runs
on the netlink worker thread.

Reconcile (at start and after every NATS reconnect) reads both KV buckets completely before
it changes anything: a bucket it cannot read (StateUnreadable) is unknown, never "no pods",
so nothing is removed and the reconcile is tried again. Every restored pod is announced to
policyd again (policy.endpoint.sync) before its datapath is ensured: policyd's record of
endpoints is its own, and a pod re-adopted after a reboot or a policyd restart needs entries.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from prometheus_client import Gauge

from services.datapath import loader, mtu
from services.datapath.map_metrics import MapOpsCollector, MapPressureCollector
from services.datapath.maps.conntrack import PIN_NAME as CT_PIN
from services.datapath.maps.endpoints import PIN_NAME as ENDPOINTS_PIN
from services.datapath.maps.endpoints import EndpointMap
from services.datapath.maps.tunnel import FROM_NETDEV, FROM_OVERLAY
from services.datapath.netlink import Worker
from services.endpointd import check
from services.endpointd.ctgc import ConntrackGC
from services.endpointd.docker import DockerDriver
from services.endpointd.ipam import IPAM, PoolExhausted
from services.endpointd.plumbing import (FROM_CONTAINER, TO_CONTAINER, NetnsInvalid, PodHasInterface, Plumber,
                                         Wiring)
from services.runtime.app import Service, main
from services.runtime.metrics import ScrapeGauges
from services.runtime.bus import RemoteError, ServiceError, StateUnreadable
from services.runtime.revert import RevertStack
from services.wire import codec, subjects
from services.wire.labels import identity_labels, namespace_labels
from services.wire.manifests import DEFAULT_NAMESPACE, Document, ManifestError, parse_namespace, parse_pod
from services.wire.messages import (EXHAUSTED, EXISTS, INVALID, NOT_FOUND, Applied, Apply,
                                    EndpointEvent, EndpointPolicy, IdentityAllocate, IdentityRelease,
                                    IpcacheDelete, IpcacheUpsert, ListRequest, NamespaceSpec,
                                    ObjectRef, Pod, PodApplied, PodCheck, PodSpec)

MAX_ENDPOINT_ID = 0xFFFF


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


class EndpointService(Service):
    NAME = "endpointd"

    async def start(self) -> None:
        self.worker = Worker()
        self._lock = asyncio.Lock()
        self.ipam = IPAM(self.config.podCIDR)
        self.namespaces: dict[str, NamespaceSpec] = {}
        self.pods: dict[str, Pod] = {}
        self.pods_gauge = Gauge("capillary_endpoints", "Local endpoints (pods)", registry=self.registry)

        # Their maps (ipcache; policy; the event ring) must be pinned before lxc.c compiles.
        for owner in ("routed", "policyd", "flowd"):
            await self._wait_for(owner)
        # Compiled in a child process, which pins the programs: endpointd attaches them by
        # fd and never loads LLVM itself (see services/datapath/bpfsys.py).
        # from_overlay and from_netdev are pinned for routed, which attaches them to the VXLAN
        # device in tunnel mode and to the underlay device in native routing.
        programs = await self.worker.run(loader.pin_programs, "lxc.c", self.config,
                                         (FROM_CONTAINER, TO_CONTAINER, FROM_OVERLAY, FROM_NETDEV))
        os.close(programs[FROM_OVERLAY])
        os.close(programs[FROM_NETDEV])
        self.endpoints = EndpointMap(Path(self.config.datapath.bpfRoot))
        self.plumber = Plumber(self.config, self.endpoints, programs[FROM_CONTAINER], programs[TO_CONTAINER])
        self.plumber.gso_max, self.plumber.gso_restore, why = await self.worker.run(mtu.pod_gso_max,
                                                                                    self.config.datapath.bigTCP)
        if why:
            self.log.warning("datapath.bigTCP ignored", reason=why)
        if self.config.cluster.enabled and self.config.cluster.routing == "tunnel":
            self.plumber.default_mtu = await self.worker.run(mtu.pod_mtu_on, self.plumber.nl,
                                                             self.config.cluster.underlayIP)
        self.ct_gc = ConntrackGC(self.config, self.worker, self.ipam.addresses, self.registry, self.log)
        self._cilium_metrics()

        replicas = self.config.cluster.kv_replicas
        self.kv_ns = await self.bus.kv(subjects.BUCKET_NAMESPACES, create=True, replicas=replicas)
        self.kv_pods = await self.bus.node_kv(subjects.BUCKET_PODS, replicas=replicas)
        async with self._lock:
            await self._reconcile()
            if self.config.docker.plugin:   # Docker's addresses too, before anything is served
                self.docker = DockerDriver(self)
                await self.docker.restore()
        self.ct_gc.start()                  # only now are the pods' addresses known
        self.bus.on_reconnect(self._resync)

        b = self.bus
        await b.serve(subjects.NAMESPACE_APPLY, Apply, self.apply_namespace)
        await b.serve(subjects.NAMESPACE_DELETE, ObjectRef, self.delete_namespace)
        await b.serve(subjects.NAMESPACE_LIST, ListRequest, self.list_namespaces)
        await b.serve(subjects.POD_APPLY, Apply, self.apply_pod)
        await b.serve(subjects.POD_DELETE, ObjectRef, self.delete_pod)
        await b.serve(subjects.POD_LIST, ListRequest, self.list_pods)
        await b.serve(subjects.POD_CHECK, ObjectRef, self.check_pod)
        if self.config.docker.plugin:
            await self.docker.start()

    def _cilium_metrics(self) -> None:
        """Cilium's endpoint gauges, and its map metrics for the endpoint and conntrack maps."""
        maps = self.config.maps
        self.registry.register(MapOpsCollector())
        self.registry.register(MapPressureCollector({
            ENDPOINTS_PIN: (lambda: len(self.endpoints.all()), maps.endpoints),
            CT_PIN: (lambda: self.ct_gc.counters()["conntrack_entries"], maps.conntrack)}))
        self.registry.register(ScrapeGauges([
            ("cilium_endpoint", "Number of endpoints managed by this agent", [], lambda: {(): len(self.pods)}),
            ("cilium_endpoint_state", "Count of all endpoints, tagged by different endpoint states",
             ["state"], lambda: {("ready",): len(self.pods)})]))

    async def counters(self) -> dict[str, int]:
        attached = await self.worker.run(
            lambda: sum(self.plumber.attached(p.status.host_ifindex) for p in self.pods.values()))
        return {"pods": len(self.pods), "namespaces": len(self.namespaces),
                "endpoint_entries": len(self.endpoints.all()), "programs_attached": attached,
                "ips_in_use": self.ipam.used, "ips_capacity": self.ipam.capacity, **self.ct_gc.counters()}

    async def stop(self) -> None:
        if hasattr(self, "ct_gc"):
            await self.ct_gc.stop()
        if getattr(self, "docker", None) is not None:
            await self.docker.stop()
        if hasattr(self, "worker"):
            self.worker.close()

    async def _wait_for(self, service: str) -> None:
        """Block until SERVICE is ready: its maps must be pinned before our program compiles."""
        self.detail = f"waiting for {service}"
        while True:
            try:
                health = await self.bus.request(subjects.health(service), timeout=1.0)
                if health.get("ready"):
                    return
            except RemoteError:
                pass
            await asyncio.sleep(0.2)

    # ---- start-up and reconnect ------------------------------------------------------------

    async def _reconcile(self) -> None:
        """Make the kernel match KV, keeping everything that is already right. Raises
        StateUnreadable (having changed nothing) when KV cannot be read."""
        namespaces = await self.bus.kv_items(self.kv_ns)
        stored_pods = await self.bus.kv_items(self.kv_pods)
        for name, raw in namespaces.items():
            self.namespaces[name] = NamespaceSpec.from_wire(raw)
        if DEFAULT_NAMESPACE not in self.namespaces:
            await self._store_namespace(NamespaceSpec(DEFAULT_NAMESPACE, namespace_labels(DEFAULT_NAMESPACE, {})))
        restored = [key for key, raw in stored_pods.items() if await self._restore_pod(key, Pod.from_wire(raw))]
        # Programs last: a pod's new program looks its peers up in maps that, after a bpffs
        # loss, hold only the pods restored so far; until then the old programs serve.
        for key in restored:
            await self.worker.run(self.plumber.attach, self.pods[key].status)
        removed = await self.worker.run(
            self.plumber.orphans,
            {p.status.host_ifname for p in self.pods.values()},
            {p.status.pod_ip for p in self.pods.values()},
            {p.status.netns for p in self.pods.values() if p.status.netns_owned},
            {p.status.endpoint_id for p in self.pods.values()},
        )
        if removed:
            self.log.warning("removed orphans", items=removed)
        self.pods_gauge.set(len(self.pods))
        self.log.info("reconciled", namespaces=len(self.namespaces), pods=len(self.pods))

    async def _restore_pod(self, key: str, pod: Pod) -> bool:
        """POD back in line with the kernel, its programs aside; False when it cannot be."""
        known = self.pods.get(key)
        if known is None or known.status.pod_ip != pod.status.pod_ip:    # a reconnect re-reads
            self.ipam.claim(pod.status.pod_ip)
        status = pod.status
        # policyd's entries before the datapath: the pod's first packet after a reboot meets them.
        await self._call(subjects.POLICY_ENDPOINT_SYNC,
                         EndpointPolicy(status.endpoint_id, status.identity, pod.spec.audit))
        try:
            status = await self.worker.run(self.plumber.ensure, pod.spec, pod.status)
        except (NetnsInvalid, OSError) as exc:
            self.log.error("pod cannot be restored", pod=key, error=str(exc))
            self.pods[key] = pod
            return False
        await self._call(subjects.IPCACHE_UPSERT, IpcacheUpsert(f"{status.pod_ip}/32", status.identity, "endpoint"))
        if status != pod.status:
            pod = Pod(pod.spec, status)
            await self.kv_pods.put(key, codec.encode(pod.to_wire()))
        self.pods[key] = pod
        return True

    async def _resync(self) -> None:
        """After a NATS reconnect, in the background: reconcile until it succeeds."""
        self._resyncing = asyncio.get_running_loop().create_task(self._resync_until_done())

    async def _resync_until_done(self) -> None:
        delay = 0.5
        while True:
            try:
                async with self._lock:
                    await self._reconcile()
                return
            except (StateUnreadable, RemoteError) as exc:
                self.log.error("reconcile failed, nothing removed; retrying", error=exc.message, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _call(self, subject: str, message, timeout: float = 5.0):
        """Call another service, retrying while it restarts; its own errors pass through."""
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                return await self.bus.request(subject, message, timeout=timeout)
            except RemoteError as exc:
                if exc.code != "unavailable" or asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)

    # ---- namespaces --------------------------------------------------------------------------

    async def _store_namespace(self, spec: NamespaceSpec) -> None:
        await self.kv_ns.put(spec.name, codec.encode(spec.to_wire()))
        self.namespaces[spec.name] = spec

    async def apply_namespace(self, req: Apply) -> Applied:
        spec = _parse(parse_namespace, req.document)
        spec = NamespaceSpec(spec.name, namespace_labels(spec.name, spec.labels))
        async with self._lock:
            current = self.namespaces.get(spec.name)
            if current is not None and req.create_only:
                raise ServiceError(EXISTS, f'namespace "{spec.name}" already exists')
            if current == spec:
                return Applied("Namespace", spec.name, "", "unchanged")
            if current is not None and any(p.spec.namespace == spec.name for p in self.pods.values()):
                raise ServiceError(INVALID, f'namespace "{spec.name}" has pods: changing its labels '
                                            "would change their identities; delete the pods first")
            await self._store_namespace(spec)
        return Applied("Namespace", spec.name, "", "configured" if current else "created")

    async def delete_namespace(self, req: ObjectRef) -> Applied:
        async with self._lock:
            if req.name not in self.namespaces:
                raise ServiceError(NOT_FOUND, f'namespace "{req.name}" not found')
            keys = [k for k, p in self.pods.items() if p.spec.namespace == req.name]
            for key in keys:
                await self._delete_pod_locked(key)
            await self.kv_ns.delete(req.name)
            del self.namespaces[req.name]
        return Applied("Namespace", req.name, "", "deleted")

    async def list_namespaces(self, _req: ListRequest) -> list[NamespaceSpec]:
        return sorted(self.namespaces.values(), key=lambda n: n.name)

    # ---- pods ----------------------------------------------------------------------------------

    async def apply_pod(self, req: Apply) -> PodApplied:
        return await self.add_pod(_parse(parse_pod, req.document), req.create_only)

    async def add_pod(self, spec: PodSpec, create_only: bool = False, ip: str | None = None,
                      peer: str = "") -> PodApplied:
        """Create SPEC's pod. IP: an address already claimed for it (the Docker IPAM driver's);
        PEER: leave the pod side in this netns under that name (libnetwork moves it)."""
        key = pod_key(spec.namespace, spec.name)
        if spec.node_name and spec.node_name != self.config.node:
            raise ServiceError(INVALID, f'spec.nodeName: pod "{key}" is for node {spec.node_name}, '
                                        f"and this is node {self.config.node}")
        async with self._lock:
            current = self.pods.get(key)
            if current is not None:
                if create_only:
                    raise ServiceError(EXISTS, f'pod "{key}" already exists')
                if current.spec == spec:
                    return PodApplied("Pod", spec.name, spec.namespace, "unchanged", current, self.plumber.router_ip)
                raise ServiceError(INVALID, f'pod "{key}" already exists with a different spec; '
                                            "pods are immutable here: delete it first")
            if spec.namespace not in self.namespaces:
                raise ServiceError(NOT_FOUND, f'metadata.namespace: namespace "{spec.namespace}" not found')
            pod = await self._create_pod(spec, ip, peer)
            self.pods[key] = pod
            self.pods_gauge.set(len(self.pods))
        await self.bus.publish(subjects.endpoint_event("created"), EndpointEvent(pod))
        self.log.info("pod created", pod=key, ip=pod.status.pod_ip, ifname=pod.status.host_ifname)
        return PodApplied("Pod", spec.name, spec.namespace, "created", pod, self.plumber.router_ip)

    async def _create_pod(self, spec: PodSpec, ip: str | None = None, peer: str = "") -> Pod:
        """The kernel side is made (host link down: nothing passes) while policyd and routed do
        their part; only once the pod's policy entries and ipcache entry are in place does
        activate() write its endpoint entry and bring it up, so its first packet meets them."""
        revert = RevertStack()
        try:
            if ip is None:
                try:
                    ip = self.ipam.allocate()
                except PoolExhausted as exc:
                    raise ServiceError(EXHAUSTED, str(exc)) from None
                revert.push("release ip", lambda: self.ipam.release(ip))
            wiring = Wiring(ip, self._endpoint_id(), peer)
            made = asyncio.ensure_future(self._plumb(spec, wiring))
            try:
                identity = await self._announce(spec, wiring, revert)
                status = dataclasses.replace(await asyncio.shield(made), identity=identity)
            except BaseException:
                await self._unplumb(made)
                raise
            revert.push("remove datapath", lambda: self.worker.run(self.plumber.delete, status))
            pod = Pod(spec, status)
            key = pod_key(spec.namespace, spec.name)
            revert.push("forget the pod's record", lambda: self.kv_pods.delete(key))
            await revert.together(("record the pod", self.kv_pods.put(key, codec.encode(pod.to_wire())), None),
                                  ("activate", self.worker.run(self.plumber.activate, status, spec), None))
        except BaseException:
            await revert.unwind()
            raise
        revert.commit()
        return pod

    async def _plumb(self, spec: PodSpec, wiring: Wiring) -> PodStatus:
        try:
            return await self.worker.run(self.plumber.create, spec, wiring)
        except (NetnsInvalid, PodHasInterface) as exc:
            raise ServiceError(INVALID, str(exc)) from None

    async def _unplumb(self, made: asyncio.Future) -> None:
        """Remove what MADE (a _plumb task) made, once it is done; a failed one made nothing."""
        try:
            status = await made
        except BaseException:
            return
        await self.worker.run(self.plumber.delete, status)

    async def _announce(self, spec: PodSpec, wiring: Wiring, revert: RevertStack) -> int:
        """The pod's identity from policyd, then its policy entries (policyd) and ipcache entry
        (routed) at once; each step done is pushed on REVERT. Returns the identity."""
        owner = f"pod:{pod_key(spec.namespace, spec.name)}"
        ns = self.namespaces[spec.namespace]
        ident = await self._call(subjects.IDENTITY_ALLOCATE, IdentityAllocate(
            identity_labels(spec.labels, spec.namespace, ns.labels), owner))
        identity = ident["id"]
        revert.push("release identity",
                    lambda: self._call(subjects.IDENTITY_RELEASE, IdentityRelease(identity, owner)))
        cidr, endpoint_id = f"{wiring.pod_ip}/32", wiring.endpoint_id
        await revert.together(
            ("forget endpoint policy",
             self._call(subjects.POLICY_ENDPOINT_SYNC, EndpointPolicy(endpoint_id, identity, spec.audit)),
             lambda: self._call(subjects.POLICY_ENDPOINT_FORGET, EndpointPolicy(endpoint_id))),
            ("remove ipcache entry", self._call(subjects.IPCACHE_UPSERT, IpcacheUpsert(cidr, identity, "endpoint")),
             lambda: self._call(subjects.IPCACHE_DELETE, IpcacheDelete(cidr, "endpoint"))))
        return identity

    def _endpoint_id(self) -> int:
        """The lowest free id, at most maps.endpoints: the per-endpoint counters are an array
        of that size (bpf/lib/metrics.h)."""
        used = {p.status.endpoint_id for p in self.pods.values()}
        limit = min(MAX_ENDPOINT_ID, self.config.maps.endpoints)
        for candidate in range(1, limit + 1):
            if candidate not in used:
                return candidate
        raise ServiceError(EXHAUSTED, f"no free endpoint id (limit {limit}, maps.endpoints)")

    async def delete_pod(self, req: ObjectRef) -> Applied:
        namespace = req.namespace or DEFAULT_NAMESPACE
        key = pod_key(namespace, req.name)
        async with self._lock:
            if key not in self.pods:
                raise ServiceError(NOT_FOUND, f'pod "{key}" not found')
            pod = await self._delete_pod_locked(key)
        await self.bus.publish(subjects.endpoint_event("deleted"), EndpointEvent(pod))
        return Applied("Pod", req.name, namespace, "deleted")

    async def _delete_pod_locked(self, key: str) -> Pod:
        pod = self.pods[key]
        status = pod.status
        # Datapath first: once the veth is gone no packet can carry the old identity.
        await self.worker.run(self.plumber.delete, status)
        await self._call(subjects.IPCACHE_DELETE, IpcacheDelete(f"{status.pod_ip}/32", "endpoint"))
        await self._call(subjects.POLICY_ENDPOINT_FORGET, EndpointPolicy(status.endpoint_id))
        await self._call(subjects.IDENTITY_RELEASE, IdentityRelease(status.identity, f"pod:{key}"))
        await self.kv_pods.delete(key)
        self.ipam.release(status.pod_ip)
        del self.pods[key]
        self.pods_gauge.set(len(self.pods))
        self.log.info("pod deleted", pod=key)
        return pod

    async def list_pods(self, req: ListRequest) -> list[Pod]:
        pods = [p for p in self.pods.values() if not req.namespace or p.spec.namespace == req.namespace]
        return sorted(pods, key=lambda p: (p.spec.namespace, p.spec.name))

    async def check_pod(self, req: ObjectRef) -> PodCheck:
        key = pod_key(req.namespace or DEFAULT_NAMESPACE, req.name)
        async with self._lock:
            if key not in self.pods:
                raise ServiceError(NOT_FOUND, f'pod "{key}" not found')
            problems = await self.worker.run(check.verify, self.plumber, self.pods[key])
        return PodCheck(key, problems)


def _parse(parser, document: dict):
    try:
        doc = Document(document.get("apiVersion", ""), document.get("kind", ""), document)
        return parser(doc)
    except ManifestError as exc:
        raise ServiceError(INVALID, str(exc)) from None



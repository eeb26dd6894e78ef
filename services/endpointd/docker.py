"""endpointd as Docker's network and IPAM driver (libnetwork's remote driver protocol).

IPAM hands out capillary's own addresses (as /32s) from the node's pod CIDR; the address
stays claimed for Docker between RequestAddress and ReleaseAddress, and a pod holds it in
between. What Docker holds (each address, and the endpoint using it once CreateEndpoint has
named one) is kept in JetStream KV (subjects.BUCKET_DOCKER_ADDRESSES) before the answer goes
back, and claimed again when endpointd starts, before it serves anything: a node restart
between RequestAddress and Join neither hands the address to another pod nor forgets it. Join makes the pod: endpointd's usual create (identity, policy entries, host veth,
program, endpoint entry, ipcache), with the pod side of the veth left on the host under a
temporary name, which libnetwork then moves into the container's sandbox as eth<N> and
configures with the address. Join's answer: that name, an on-link route to the router and
the default route through it, and no gateway service (Docker adds no second interface).
Leave deletes the pod. The pod is named after the container, in the compose project's
namespace (or `docker`), with the container's labels (services.dockerdriver.engine).
"""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from services.dockerdriver import engine
from services.dockerdriver.server import DriverError, serve
from services.runtime.bus import ServiceError
from services.wire import codec, subjects
from services.wire.messages import Apply, ObjectRef, PodSpec

ADDRESS_SPACE = "capillary"
POOL_ID = "capillary"
GATEWAY_REQUEST = "com.docker.network.gateway"
ATTACHMENT = "docker/"
ANY_POOL = "0.0.0.0/0"
CONNECTED, NEXTHOP = 1, 0        # libnetwork's route types


class DockerDriver:
    def __init__(self, service) -> None:
        self.svc = service
        self.config = service.config
        self.reserved: set[str] = set()              # claimed for Docker by RequestAddress
        self.endpoints: dict[str, str] = {}           # endpoint id -> its address
        self.server: asyncio.AbstractServer | None = None

    async def restore(self) -> None:
        """Claim the addresses Docker held before endpointd (re)started; call before serving.
        Raises StateUnreadable when the bucket cannot be read (nothing claimed then)."""
        self.kv = await self.svc.bus.kv(subjects.BUCKET_DOCKER_ADDRESSES, create=True)
        held = await self.svc.bus.kv_items(self.kv)
        for ip, record in held.items():
            try:
                if not self.svc.ipam.in_use(ip):      # else a restored pod holds it already
                    self.svc.ipam.claim(ip)
            except ValueError as exc:                 # the pod CIDR changed under it
                self.svc.log.warning("docker address not restored", address=ip, error=str(exc))
                continue
            self.reserved.add(ip)
            if record.get("endpoint"):
                self.endpoints[record["endpoint"]] = ip

    async def _record(self, ip: str, endpoint: str = "") -> None:
        try:
            await self.kv.put(ip, codec.encode({"address": ip, "endpoint": endpoint}))
        except Exception as exc:           # nats-py raises several unrelated types here
            raise DriverError(f"cannot record address {ip}: {exc}") from None

    async def start(self) -> None:
        self.server = await serve(Path(self.config.docker.plugin), self.routes())

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            Path(self.config.docker.plugin).unlink(missing_ok=True)

    def routes(self) -> dict:
        ok = self._empty
        return {
            "/Plugin.Activate": self._activate,
            "/NetworkDriver.GetCapabilities": self._capabilities,
            "/NetworkDriver.CreateNetwork": self._create_network, "/NetworkDriver.DeleteNetwork": ok,
            "/NetworkDriver.CreateEndpoint": self._create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self._oper_info,
            "/NetworkDriver.DeleteEndpoint": self._delete_endpoint,
            "/NetworkDriver.Join": self._join, "/NetworkDriver.Leave": self._leave,
            "/NetworkDriver.DiscoverNew": ok, "/NetworkDriver.DiscoverDelete": ok,
            "/NetworkDriver.ProgramExternalConnectivity": ok,
            "/NetworkDriver.RevokeExternalConnectivity": ok,
            "/IpamDriver.GetCapabilities": self._ipam_capabilities,
            "/IpamDriver.GetDefaultAddressSpaces": self._address_spaces,
            "/IpamDriver.RequestPool": self._request_pool, "/IpamDriver.ReleasePool": ok,
            "/IpamDriver.RequestAddress": self._request_address,
            "/IpamDriver.ReleaseAddress": self._release_address,
        }

    async def _empty(self, _req: dict) -> dict:
        return {}

    async def _activate(self, _req: dict) -> dict:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    async def _capabilities(self, _req: dict) -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    async def _ipam_capabilities(self, _req: dict) -> dict:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    async def _address_spaces(self, _req: dict) -> dict:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    # ---- IPAM ------------------------------------------------------------------------------

    async def _request_pool(self, req: dict) -> dict:
        if req.get("V6"):
            raise DriverError("capillary has no IPv6 pool")
        if req.get("Pool") and req["Pool"] != self.config.podCIDR:
            raise DriverError(f"capillary's pool is the node's pod CIDR {self.config.podCIDR}, "
                              f"not {req['Pool']}: leave --subnet out")
        # Without --subnet, libnetwork asks again for as long as the pool overlaps a host route
        # (and the pod CIDR always does: the node routes it). It skips that check for the
        # "no pool" answer, 0.0.0.0/0; addresses come from the pod CIDR either way.
        return {"PoolID": POOL_ID, "Pool": req.get("Pool") or ANY_POOL, "Data": {}}

    async def _request_address(self, req: dict) -> dict:
        if req.get("PoolID") != POOL_ID:
            raise DriverError(f"unknown pool {req.get('PoolID')!r}")
        options = req.get("Options") or {}
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            return {"Address": f"{self.config.router_ip}/32", "Data": {}}
        async with self.svc._lock:
            try:
                if req.get("Address"):
                    ip = req["Address"].split("/")[0]
                    self.svc.ipam.claim(ip)
                else:
                    ip = self.svc.ipam.allocate()
            except ValueError as exc:
                raise DriverError(f"address: {exc}") from None
            try:
                await self._record(ip)
            except DriverError:
                self.svc.ipam.release(ip)
                raise
            self.reserved.add(ip)
        return {"Address": f"{ip}/32", "Data": {}}

    async def _release_address(self, req: dict) -> dict:
        ip = (req.get("Address") or "").split("/")[0]
        async with self.svc._lock:
            if ip in self.reserved:
                try:
                    await self.kv.delete(ip)
                except Exception as exc:       # still held: Docker may retry the release
                    raise DriverError(f"cannot release address {ip}: {exc}") from None
            self.reserved.discard(ip)
            held = any(p.status.pod_ip == ip for p in self.svc.pods.values())
            if not held and ip and ip != str(self.config.router_ip):
                self.svc.ipam.release(ip)
        return {}

    # ---- endpoints -------------------------------------------------------------------------

    async def _create_network(self, req: dict) -> dict:
        for data in req.get("IPv4Data") or []:
            if data.get("Pool") not in (ANY_POOL, self.config.podCIDR):
                raise DriverError(f"a capillary network needs capillary's IPAM: "
                                  f"docker network create -d {self.config.docker.driver} "
                                  f"--ipam-driver {self.config.docker.driver} NAME")
        return {}

    async def _create_endpoint(self, req: dict) -> dict:
        iface = req.get("Interface") or {}
        if iface.get("MacAddress"):
            raise DriverError("capillary chooses the MAC address: leave --mac-address out")
        ip = (iface.get("Address") or "").split("/")[0]
        if ip not in self.reserved:
            raise DriverError(f"address {ip or '(none)'} did not come from capillary's IPAM")
        await self._record(ip, req["EndpointID"])
        self.endpoints[req["EndpointID"]] = ip
        return {"Interface": {}}

    async def _oper_info(self, _req: dict) -> dict:
        return {"Value": {}}

    def _pod_for(self, endpoint_id: str):
        return next((p for p in self.svc.pods.values() if p.spec.attachment == ATTACHMENT + endpoint_id), None)

    async def _join(self, req: dict) -> dict:
        endpoint_id, sandbox = req["EndpointID"], req.get("SandboxKey", "")
        ip = self.endpoints.get(endpoint_id)
        if ip is None:
            raise DriverError(f"unknown endpoint {endpoint_id}")
        try:
            found = await asyncio.to_thread(engine.container_for_endpoint, self.config.docker.host,
                                            req.get("NetworkID", ""), endpoint_id)
        except engine.EngineError as exc:
            raise DriverError(str(exc)) from None
        await self._ensure_namespace(found.namespace)
        peer = "tmp" + hashlib.sha256(endpoint_id.encode()).hexdigest()[:12]
        spec = PodSpec(name=found.name, namespace=found.namespace, labels=found.labels, netns=sandbox,
                       attachment=ATTACHMENT + endpoint_id)
        try:
            await self.svc.add_pod(spec, create_only=True, ip=ip, peer=peer)
        except ServiceError as exc:
            raise DriverError(f"pod {found.namespace}/{found.name}: {exc.message}") from None
        router = str(self.config.router_ip)
        return {"InterfaceName": {"SrcName": peer, "DstPrefix": "eth"},
                "StaticRoutes": [{"Destination": f"{router}/32", "RouteType": CONNECTED},
                                 {"Destination": "0.0.0.0/0", "RouteType": NEXTHOP, "NextHop": router}],
                "DisableGatewayService": True}

    async def _ensure_namespace(self, name: str) -> None:
        if name not in self.svc.namespaces:
            await self.svc.apply_namespace(Apply({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": name}}))

    async def _leave(self, req: dict) -> dict:
        await self._delete_pod(req["EndpointID"])
        return {}

    async def _delete_endpoint(self, req: dict) -> dict:
        await self._delete_pod(req["EndpointID"])
        ip = self.endpoints.pop(req["EndpointID"], None)
        if ip is not None and ip in self.reserved:
            await self._record(ip)             # still Docker's until ReleaseAddress
        return {}

    async def _delete_pod(self, endpoint_id: str) -> None:
        """Delete the endpoint's pod (none: done); its address stays claimed for Docker."""
        pod = self._pod_for(endpoint_id)
        if pod is None:
            return
        try:
            await self.svc.delete_pod(ObjectRef(pod.spec.name, pod.spec.namespace))
        except ServiceError as exc:
            if exc.code != "not_found":
                raise DriverError(str(exc)) from None
        async with self.svc._lock:
            ip = pod.status.pod_ip
            if ip in self.reserved and not self.svc.ipam.in_use(ip):
                self.svc.ipam.claim(ip)

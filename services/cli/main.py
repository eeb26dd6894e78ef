"""capillary: the command line for a capillary node."""
from __future__ import annotations

import argparse
import sys

from pathlib import Path

from services.cli import bpf, cluster, debuginfo, dryrun, monitor, node, objects, observe, walk, webpage
from services.cli.client import Client, follow, run
from services.cli.output import error
from services.runtime.bus import ServiceError
from services.runtime.config import ConfigError, load_config


DELETE_KINDS = {"pod": "Pod", "pods": "Pod", "po": "Pod", "namespace": "Namespace", "namespaces": "Namespace",
                "ns": "Namespace", "networkpolicy": "NetworkPolicy", "netpol": "NetworkPolicy",
                "ciliumnetworkpolicy": "CiliumNetworkPolicy", "cnp": "CiliumNetworkPolicy",
                "ciliumclusterwidenetworkpolicy": "CiliumClusterwideNetworkPolicy",
                "ccnp": "CiliumClusterwideNetworkPolicy"}


INTERRUPTED = 130        # as a shell reports a command ended by SIGINT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="capillary", description="eBPF pod networking for one node")
    p.add_argument("--config", help="node config file (default: $CAPILLARY_CONFIG or /etc/capillary/config.yaml)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the node (nats-server and the four services)")
    up.add_argument("-d", "--detach", action="store_true", help="return once every service is healthy")
    up.add_argument("--timeout", type=float, default=node.READY_TIMEOUT, help="seconds to wait with --detach")
    down = sub.add_parser("down", help="stop the node (pods and their connectivity stay)")
    down.add_argument("--purge", action="store_true",
                      help="also remove every pod, device, iptables rule, pinned map and the state dir")
    st = sub.add_parser("status", help="health of the node and its services")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")

    for name, text in (("apply", "create or leave unchanged the objects in a file"),
                       ("create", "create the objects in a file; existing ones are an error")):
        a = sub.add_parser(name, help=text)
        a.add_argument("-f", "--filename", required=True, help="YAML or JSON file, or - for stdin")
        if name == "apply":
            a.add_argument("--dry-run", action="store_true",
                           help="write nothing: show how each policy in the file would change which pods "
                                "reach which, and by which rule")
            a.add_argument("-o", "--output", choices=["text", "json"], default="text",
                           help="with --dry-run: json gives the whole matrix")

    d = sub.add_parser("delete", help="delete objects: -f FILE, or KIND NAME... (pod NS/NAME, namespace "
                                      "NAME, networkpolicy|cnp|ccnp NAME)")
    d.add_argument("-f", "--filename")
    d.add_argument("kind", nargs="?", choices=sorted(DELETE_KINDS))
    d.add_argument("names", nargs="*")
    d.add_argument("-n", "--namespace", default="")

    bpf = sub.add_parser("bpf", help="show BPF map contents")
    bpf_sub = bpf.add_subparsers(dest="bpf_command", required=True, metavar="MAP")
    pol = bpf_sub.add_parser("policy", help="an endpoint's policy entries: policy get NS/POD")
    pol.add_argument("verb", choices=["get"])
    pol.add_argument("pod", metavar="NS/POD")
    pol.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ct = bpf_sub.add_parser("ct", help="connection tracking: ct list")
    ct.add_argument("verb", choices=["list"])
    ct.add_argument("-o", "--output", choices=["table", "json"], default="table")
    ep = bpf_sub.add_parser("endpoint", help="the endpoint map: endpoint list")
    ep.add_argument("verb", choices=["list"])
    ep.add_argument("-o", "--output", choices=["table", "json"], default="table")

    g = sub.add_parser("get", help="list pods, namespaces, identities or the ipcache")
    g.add_argument("resource")
    g.add_argument("-n", "--namespace", default="")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")

    observe.add_parser(sub)
    walk.add_parser(sub)
    monitor.add_parser(sub)
    debuginfo.add_parser(sub)
    webpage.add_parser(sub)

    c = sub.add_parser("cluster", help="a local cluster: N host namespaces on an underlay bridge, a node in each")
    c_sub = c.add_subparsers(dest="cluster_command", required=True, metavar="up|down")
    cu = c_sub.add_parser("up", help="make the namespaces and start a node in each")
    cu.add_argument("--nodes", type=int, default=3)
    cu.add_argument("--name", default="lab", help="cluster name; nodes are NAME-1..NAME-N")
    cu.add_argument("--routing", choices=["native", "tunnel"], default="native")
    cu.add_argument("--heartbeat-timeout", type=int, default=6, help="seconds before a silent node is dropped")
    cd = c_sub.add_parser("down", help="stop every node, remove the namespaces, bridge and mounts")
    cd.add_argument("--purge", action="store_true", help="also remove pods, pins and the cluster's directory")
    for cp in (cu, cd):
        cp.add_argument("--dir", default=str(cluster.DEFAULT_DIR), help="where the nodes' configs and state live")

    e = sub.add_parser("exec", help="run a command in a pod's network namespace")
    e.add_argument("pod", metavar="NS/NAME")
    e.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    return p


async def _with_client(config, fn, *args) -> int:
    async with Client(config) as client:
        return await fn(client, *args)


async def _delete(client: Client, args) -> int:
    if args.filename:
        return await objects.delete_file(client, args.filename)
    if not args.kind or not args.names:
        raise ServiceError("invalid", "delete needs -f FILE, `pod NS/NAME` or `namespace NAME`")
    kind = DELETE_KINDS[args.kind]
    for ref in args.names:
        if kind == "Pod":
            ns, name = objects.split_ref(ref)
            await objects.delete_one(client, "Pod", ns, name)
        elif kind in ("Namespace", "CiliumClusterwideNetworkPolicy"):
            await objects.delete_one(client, kind, "", ref)
        else:
            await objects.delete_one(client, kind, args.namespace or "default", ref)
    return 0


def dispatch(args) -> int:
    cmd = args.command
    if cmd == "cluster":        # no node config: it writes one per node
        if args.cluster_command == "up":
            return cluster.up(Path(args.dir), args.name, args.nodes, args.routing, args.heartbeat_timeout)
        return cluster.down(Path(args.dir), args.purge)
    config = load_config(args.config)
    if cmd == "get" and args.resource in ("nodes", "node", "no"):
        return run(_with_client(config, cluster.get_nodes, args.output))
    if cmd == "up":
        return node.up_detached(config, args.config, args.timeout) if args.detach \
            else node.up_foreground(config, args.config)
    if cmd == "down":
        rc = node.down(config, leaving=args.purge)
        if rc == 0 and args.purge and config.cluster.enabled and config.state_path.exists():
            run(node.leave_cluster(config))
        return node.purge(config) if rc == 0 and args.purge else rc
    if cmd == "status":
        return run(node.status(config, args.output))
    if cmd == "apply" and args.dry_run:
        return run(_with_client(config, dryrun.dry_run, args.filename, args.output))
    if cmd == "apply" and args.output != "text":
        raise ServiceError("invalid", "-o/--output goes with --dry-run")
    if cmd in ("apply", "create"):
        return run(_with_client(config, objects.apply, args.filename, cmd == "create"))
    if cmd == "delete":
        return run(_with_client(config, _delete, args))
    if cmd == "get":
        namespace = "" if args.all_namespaces else args.namespace
        return run(_with_client(config, objects.get, args.resource, namespace, args.output))
    if cmd == "bpf":
        if args.bpf_command == "policy":
            return run(_with_client(config, bpf.policy_get, args.pod, args.output))
        if args.bpf_command == "ct":
            return bpf.ct_list(config, args.output)
        return bpf.endpoint_list(config, args.output)
    if cmd == "observe":                   # Ctrl-C is the way to stop -f
        return follow(_with_client(config, observe.observe, args))
    if cmd == "monitor":
        return follow(_with_client(config, monitor.monitor, args))
    if cmd == "debuginfo":
        return run(debuginfo.debuginfo(config, args.file))
    if cmd == "walk":
        return follow(_with_client(config, walk.walk, args), interrupted=INTERRUPTED)
    if cmd == "web":
        return webpage.show(config, args.token)
    if cmd == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        path = run(_with_client(config, objects.netns_of, args.pod))
        objects.exec_in(path, argv)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except (ServiceError, ConfigError) as exc:
        error(exc.message if isinstance(exc, ServiceError) else str(exc))
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

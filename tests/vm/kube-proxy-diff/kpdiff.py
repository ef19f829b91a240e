#!/usr/bin/env python3
"""The differential test's tool: kube-proxy (IPVS mode) and svc-proxy side by side.

  kpdiff.py rounds [--isolate] STATE...     group the corpus into rounds (same proxy flags)
  kpdiff.py prepare OUT STATE...            OUT/apply.yaml, OUT/status.yaml, OUT/delete.txt
  kpdiff.py settled API.json                exit 0 once the EndpointSlice controller has
                                            caught up with the Pods in API.json
  kpdiff.py normalize --dummy DEV --api API.json DIR
                                            what one proxy programmed (DIR/ipvs.save,
                                            DIR/addr.json, DIR/ipset.save), one line per fact
  kpdiff.py compare --api API.json --intended FILE --states STATE... --kube-proxy LINES --svc-proxy LINES
                                            PASS/FAIL lines; exit 1 on a difference not listed
                                            in FILE, or a listed one that is not seen
  kpdiff.py check-doc INTENDED DOC          every listed difference is in DOC's section
  kpdiff.py selftest                        the normalizer on dumps recorded in the VM (fixtures/)

A state is one YAML file of Kubernetes objects (tests/vm/kube-proxy-diff/states/). Its name is
the file name without a leading "NN-" and ".yaml"; objects without a namespace go into
"kpd-<name>". Header comments: "# kpdiff-flags: ARGS" (given to both proxies; states with the
same flags share a round), "# kpdiff-include: PATH" (a file of the repository whose documents
come first), "# kpdiff-expect: nothing" (neither proxy may program anything for it). A Pod or
Service document may carry a status (applied to the status subresource after the objects); a
Pod annotated kpdiff.nodenet.test/delete: "true" is deleted once Ready (it stays Terminating:
there is no kubelet to finish it). Pods get the label kpdiff.nodenet.test/state=<name>.

Normalized lines (addresses as they are, both proxies see the same API; a namespace's own
apiserver0 and link-local addresses become <IFNAME:v4>, <IFNAME:v6>):
  service PROTO VIP:PORT SCHED [flags=F,..] [persistent=SECS] [netmask=M] [ops] [pe=NAME]
  dest PROTO VIP:PORT -> RIP:RPORT METHOD weight=W
  vip ADDR/PREFIX              an address on the proxy's dummy device
  dummy up|down                the dummy device's administrative state
  set MEANING ENTRY            an ipset member; MEANING names what the set is for
  set MEANING = DERIVATION     the whole set is exactly what DERIVATION says (one line instead
                               of one per member: kube-proxy's sets that restate the IPVS table)
"""
import argparse
import ipaddress
import json
import os
import re
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
NAMESPACE_PREFIX = "kpd-"
DELETE_ANNOTATION = "kpdiff.nodenet.test/delete"
STATE_LABEL = "kpdiff.nodenet.test/state"
CLUSTER_SCOPED = {"Node", "Namespace"}
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"

# kube-proxy's IPVS-mode sets (pkg/proxy/ipvs/ipset.go), by what they hold. The IPv6 copies are
# "KUBE-6-..." cut to ipset's 31 characters (NewIPSet).
KUBE_SETS = {
    "KUBE-LOOP-BACK": "loop-back",
    "KUBE-CLUSTER-IP": "cluster-ip",
    "KUBE-EXTERNAL-IP": "external-ip",
    "KUBE-EXTERNAL-IP-LOCAL": "external-ip-local",
    "KUBE-LOAD-BALANCER": "load-balancer",
    "KUBE-LOAD-BALANCER-LOCAL": "load-balancer-local",
    "KUBE-LOAD-BALANCER-FW": "load-balancer-fw",
    "KUBE-LOAD-BALANCER-SOURCE-IP": "load-balancer-source-ip",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR": "load-balancer-source-cidr",
    "KUBE-NODE-PORT-TCP": "node-port-tcp",
    "KUBE-NODE-PORT-LOCAL-TCP": "node-port-local-tcp",
    "KUBE-NODE-PORT-UDP": "node-port-udp",
    "KUBE-NODE-PORT-LOCAL-UDP": "node-port-local-udp",
    "KUBE-NODE-PORT-SCTP-HASH": "node-port-sctp",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH": "node-port-local-sctp",
    "KUBE-HEALTH-CHECK-NODE-PORT": "health-check-node-port",
    "KUBE-IPVS-IPS": "ipvs-ips",
}
SET_MEANING = dict(KUBE_SETS)
for _name, _meaning in KUBE_SETS.items():
    SET_MEANING[_name.replace("KUBE-", "KUBE-6-", 1)[:31]] = _meaning
# svc-proxy's sets: SVCPROXY-[6-]NAME means "name" lowercased (kube-proxy's meaning where the
# names match), except these.
for _name, _meaning in {
    "LB-SOURCE-CIDR": "load-balancer-source-cidr",
    "LB-SOURCE-IP": "load-balancer-source-ip",
    "LB-NO-NODE": "load-balancer-no-node",
    "VIPS": "ipvs-ips",
}.items():
    SET_MEANING["SVCPROXY-" + _name] = _meaning
    SET_MEANING["SVCPROXY-6-" + _name] = _meaning

# What kube-proxy's restating sets hold, derived from the API (see derivations()).
DERIVATION_TEXT = {
    "cluster-ip": "every ClusterIP,proto:port",
    "external-ip": "every external IP,proto:port (externalTrafficPolicy Cluster)",
    "external-ip-local": "every external IP,proto:port (externalTrafficPolicy Local)",
    "load-balancer": "every load-balancer IP,proto:port",
    "load-balancer-local": "every load-balancer IP,proto:port (externalTrafficPolicy Local)",
    "load-balancer-fw": "every load-balancer IP,proto:port with source ranges",
    "load-balancer-source-cidr": "every load-balancer IP,proto:port,source range",
    "node-port-tcp": "every TCP node port",
    "node-port-udp": "every UDP node port",
    "node-port-local-tcp": "every TCP node port (externalTrafficPolicy Local)",
    "node-port-local-udp": "every UDP node port (externalTrafficPolicy Local)",
    "health-check-node-port": "every health check node port",
    "ipvs-ips": "every address on the dummy device",
    "owned": "every virtual service not on the dummy device",
}


def die(msg):
    print("kpdiff: %s" % msg, file=sys.stderr)
    sys.exit(2)


# --- states -------------------------------------------------------------------------------------


class State:
    def __init__(self, path):
        self.path = path
        base = os.path.basename(path)
        if not base.endswith(".yaml"):
            die("%s: a state file ends in .yaml" % path)
        self.name = re.sub(r"^\d+-", "", base[: -len(".yaml")])
        self.namespace = NAMESPACE_PREFIX + self.name
        self.flags = ""
        self.expect_nothing = False
        includes = []
        with open(path) as f:
            text = f.read()
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            m = re.match(r"#\s*kpdiff-(\w+):\s*(.*?)\s*$", line)
            if not m:
                continue
            key, value = m.groups()
            if key == "flags":
                self.flags = value
            elif key == "include":
                includes.append(os.path.join(REPO, value))
            elif key == "expect" and value == "nothing":
                self.expect_nothing = True
            else:
                die("%s: unknown header kpdiff-%s: %s" % (path, key, value))
        self.docs = []
        for inc in includes:
            with open(inc) as f:
                self.docs.extend(d for d in yaml.safe_load_all(f) if d)
        self.docs.extend(d for d in yaml.safe_load_all(text) if d)
        for d in self.docs:
            if d.get("kind") not in CLUSTER_SCOPED:
                d.setdefault("metadata", {}).setdefault("namespace", self.namespace)


def load_states(paths):
    states = [State(p) for p in paths]
    names = [s.name for s in states]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        die("two state files are called %s" % ", ".join(sorted(dup)))
    return states


def cmd_rounds(args):
    rounds = []
    for s in load_states(args.states):
        for r in rounds:
            if r[0] == s.flags and not args.isolate:
                r[1].append(s.path)
                break
        else:
            rounds.append((s.flags, [s.path]))
    # Rounds with kube-proxy's defaults first.
    rounds.sort(key=lambda r: r[0] != "")
    for flags, paths in rounds:
        print("%s|%s" % (flags, " ".join(paths)))


def cmd_prepare(args):
    os.makedirs(args.out, exist_ok=True)
    objects, statuses, deletes = [], [], []
    for s in load_states(args.states):
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": s.namespace}})
        for d in s.docs:
            d = json.loads(json.dumps(d))
            meta = d.get("metadata", {})
            if "status" in d and d.get("kind") in ("Pod", "Service"):
                statuses.append(
                    {
                        "apiVersion": d["apiVersion"],
                        "kind": d["kind"],
                        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                        "status": d.pop("status"),
                    }
                )
            if d.get("kind") == "Pod":
                # One label on every Pod of the corpus: the runner force-deletes them with one call.
                meta.setdefault("labels", {})[STATE_LABEL] = s.name
            if d.get("kind") == "Pod" and meta.get("annotations", {}).get(DELETE_ANNOTATION) == "true":
                deletes.append("%s %s" % (meta["namespace"], meta["name"]))
            objects.append(d)
    with open(os.path.join(args.out, "apply.yaml"), "w") as f:
        yaml.safe_dump_all(objects, f, sort_keys=False)
    with open(os.path.join(args.out, "status.yaml"), "w") as f:
        yaml.safe_dump_all(statuses, f, sort_keys=False)
    with open(os.path.join(args.out, "delete.txt"), "w") as f:
        f.write("".join(line + "\n" for line in deletes))
    with open(os.path.join(args.out, "namespaces.txt"), "w") as f:
        f.write("".join(s.namespace + "\n" for s in load_states(args.states)))


# --- the API's view -----------------------------------------------------------------------------


def api_items(path):
    with open(path) as f:
        return json.load(f)["items"]


def condition(pod, kind):
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return c.get("status") == "True"
    return False


def cmd_settled(args):
    items = api_items(args.api)
    pods = [i for i in items if i["kind"] == "Pod"]
    slices = [i for i in items if i["kind"] == "EndpointSlice"]
    lagging = []
    for svc in (i for i in items if i["kind"] == "Service"):
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        selector = svc["spec"].get("selector")
        if not ns.startswith(NAMESPACE_PREFIX) or not selector:
            continue
        seen = {}
        for sl in slices:
            labels = sl["metadata"].get("labels", {})
            if (
                sl["metadata"]["namespace"] == ns
                and labels.get("kubernetes.io/service-name") == name
                and labels.get("endpointslice.kubernetes.io/managed-by") == SLICE_CONTROLLER
            ):
                for ep in sl.get("endpoints") or []:
                    for a in ep["addresses"]:
                        seen[a] = ep.get("conditions", {})
        for pod in pods:
            labels = pod["metadata"].get("labels", {})
            ip = pod.get("status", {}).get("podIP")
            if pod["metadata"]["namespace"] != ns or not ip:
                continue
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            deleting = "deletionTimestamp" in pod["metadata"]
            want = (condition(pod, "Ready") and not deleting, deleting)
            c = seen.get(ip)
            got = None if c is None else (c.get("ready", False), c.get("terminating", False))
            if got != want:
                lagging.append("%s/%s: %s %s, slice says %s" % (ns, name, pod["metadata"]["name"], want, got))
    if lagging:
        print("not yet: " + "; ".join(lagging), file=sys.stderr)
        sys.exit(1)


def proxied_services(items):
    """The Services both proxies program: not headless, not ExternalName, not another proxy's."""
    for svc in items:
        if svc["kind"] != "Service":
            continue
        spec = svc["spec"]
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") in (None, "", "None"):
            continue
        if PROXY_NAME_LABEL in svc["metadata"].get("labels", {}):
            continue
        yield svc


def canon_ip(s):
    return str(ipaddress.ip_address(s))


def ip_port(ip, port):
    ip = canon_ip(ip)
    return "[%s]:%s" % (ip, port) if ":" in ip else "%s:%s" % (ip, port)


def derivations(items, dummy_addresses, services):
    """What the sets that restate the API or the IPVS table hold, for each meaning (entries as
    normalized); `services` are the normalized "service ..." lines."""
    d = {k: set() for k in DERIVATION_TEXT}
    on_dummy = {a.split("/")[0] for a in dummy_addresses}
    d["ipvs-ips"] = on_dummy
    for line in services:
        proto, vip = line.split()[1:3]
        host, port = split_host_port(vip)
        if host not in on_dummy:
            d["owned"].add("%s,%s:%s" % (host, proto.lower(), port))
    for svc in proxied_services(items):
        spec = svc["spec"]
        local = spec.get("externalTrafficPolicy") == "Local"
        ingress = [i["ip"] for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress", []) if i.get("ip")]
        ranges = spec.get("loadBalancerSourceRanges") or []
        for p in spec.get("ports", []):
            proto = p.get("protocol", "TCP").lower()
            for ip in spec.get("clusterIPs") or [spec["clusterIP"]]:
                d["cluster-ip"].add("%s,%s:%s" % (canon_ip(ip), proto, p["port"]))
            for ip in spec.get("externalIPs") or []:
                d["external-ip-local" if local else "external-ip"].add("%s,%s:%s" % (canon_ip(ip), proto, p["port"]))
            if spec.get("type") == "LoadBalancer":
                for ip in ingress:
                    entry = "%s,%s:%s" % (canon_ip(ip), proto, p["port"])
                    d["load-balancer"].add(entry)
                    if local:
                        d["load-balancer-local"].add(entry)
                    if ranges:
                        d["load-balancer-fw"].add(entry)
                        for r in ranges:
                            d["load-balancer-source-cidr"].add("%s,%s" % (entry, ipaddress.ip_network(r, strict=False)))
            if p.get("nodePort") and proto in ("tcp", "udp"):
                d["node-port-%s" % proto].add(str(p["nodePort"]))
                if local:
                    d["node-port-local-%s" % proto].add(str(p["nodePort"]))
        if spec.get("healthCheckNodePort"):
            d["health-check-node-port"].add(str(spec["healthCheckNodePort"]))
    return d


def attribution(items):
    """Who each VIP:port, address, endpoint and node port belongs to: a state of the corpus, or
    "*" for objects outside it (the API server's own `kubernetes` Service, in every round)."""
    vip_ports, vips, endpoints, node_ports = {}, {}, {}, {}

    def owner(meta):
        ns = meta["namespace"]
        return ns[len(NAMESPACE_PREFIX) :] if ns.startswith(NAMESPACE_PREFIX) else "*"

    for svc in (i for i in items if i["kind"] == "Service"):
        spec, who = svc["spec"], owner(svc["metadata"])
        ips = [i for i in spec.get("clusterIPs") or [spec.get("clusterIP")] if i and i != "None"]
        ips += spec.get("externalIPs") or []
        ips += [i["ip"] for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress", []) if i.get("ip")]
        for ip in ips:
            vips.setdefault(canon_ip(ip), who)
            for p in spec.get("ports", []):
                vip_ports.setdefault((canon_ip(ip), str(p["port"])), who)
        for p in spec.get("ports", []):
            if p.get("nodePort"):
                node_ports.setdefault(str(p["nodePort"]), who)
    for sl in (i for i in items if i["kind"] == "EndpointSlice"):
        who = owner(sl["metadata"])
        for ep in sl.get("endpoints") or []:
            for a in ep["addresses"]:
                if sl.get("addressType") in ("IPv4", "IPv6"):
                    endpoints.setdefault(canon_ip(a), who)
    return vip_ports, vips, endpoints, node_ports


def state_of(line, maps):
    """The state a normalized line is about (see attribution())."""
    vip_ports, vips, endpoints, node_ports = maps
    words = line.split()

    def ip(s):
        try:
            return canon_ip(s)
        except ValueError:
            return s  # a placeholder such as <apiserver0:v4>

    if words[0] in ("service", "dest"):
        host, port = split_host_port(words[2])
        return vip_ports.get((ip(host), port)) or node_ports.get(port, "*")
    if words[0] == "vip":
        return vips.get(ip(words[1].split("/")[0]), "*")
    if words[0] == "set" and words[2] != "=":
        parts = words[2].split(",")
        if re.match(r"^\d+$", parts[0]):
            return node_ports.get(parts[0], "*")
        first = ip(parts[0])
        port = parts[1].split(":")[1] if len(parts) > 1 and ":" in parts[1] else None
        return vip_ports.get((first, port)) or endpoints.get(first) or node_ports.get(port) or vips.get(first, "*")
    return "*"


# --- normalization ------------------------------------------------------------------------------

PROTO = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}
METHOD = {"-m": "masq", "-g": "route", "-i": "tunnel"}


def split_host_port(s):
    m = re.match(r"^\[(.+)\]:(\d+)$", s) or re.match(r"^(<[^>]+>):(\d+)$", s) or re.match(r"^([^:]+):(\d+)$", s)
    if not m:
        die("not ADDR:PORT: %r" % s)
    return m.group(1), m.group(2)


class Tokens:
    """A namespace's own addresses that differ between two equal nodes, as placeholders: the
    addresses of apiserver0 (each namespace has its own link to the API server) and link-local
    ones, e.g. <apiserver0:v4>, <eth0:v6>."""

    def __init__(self, addr_json, dummy):
        self.map = {}
        self.dummy_addresses = []
        self.dummy_up = False
        for link in addr_json:
            name = link["ifname"]
            if name == dummy:
                self.dummy_up = "UP" in link.get("flags", [])
            count = {}
            for a in link.get("addr_info", []):
                ip = ipaddress.ip_address(a["local"])
                if name == "apiserver0" or ip.is_link_local:
                    fam = "v%d" % ip.version
                    count[fam] = count.get(fam, 0) + 1
                    n = "" if count[fam] == 1 else str(count[fam])
                    self.map[str(ip)] = "<%s:%s%s>" % (name, fam, n)
                elif name == dummy:
                    self.dummy_addresses.append("%s/%s" % (ip, a["prefixlen"]))

    def ip(self, s):
        if s.startswith("<"):
            return s  # already a placeholder
        s = canon_ip(s)
        return self.map.get(s, s)

    def host_port(self, s):
        host, port = split_host_port(s)
        host = self.ip(host)
        return "[%s]:%s" % (host, port) if ":" in host and not host.startswith("<") else "%s:%s" % (host, port)


def ipvs_lines(text, tokens):
    out = []
    for raw in text.splitlines():
        words = raw.split()
        if not words:
            continue
        verb, proto = words[0], PROTO.get(words[1])
        if verb not in ("-A", "-a") or proto is None:
            die("unexpected ipvsadm -S line: %r" % raw)
        vip = tokens.host_port(words[2])
        opts = words[3:]
        if verb == "-A":
            line = ["service", proto, vip]
            i = 0
            extra = []
            while i < len(opts):
                o = opts[i]
                if o == "-s":
                    line.append(opts[i + 1])
                elif o == "-b":
                    extra.append("flags=" + opts[i + 1])
                elif o == "-p":
                    extra.append("persistent=" + opts[i + 1])
                elif o == "-M":
                    extra.append("netmask=" + opts[i + 1])
                elif o == "--pe":
                    extra.append("pe=" + opts[i + 1])
                elif o == "-o":
                    extra.append("ops")
                    i -= 1
                else:
                    die("unknown option %s in %r" % (o, raw))
                i += 2
            out.append(" ".join(line + extra))
        else:
            if opts[0] != "-r":
                die("unexpected real server line %r" % raw)
            rs = tokens.host_port(opts[1])
            method, weight = None, None
            i = 2
            while i < len(opts):
                o = opts[i]
                if o in METHOD:
                    method = METHOD[o]
                    i += 1
                elif o == "-w":
                    weight = opts[i + 1]
                    i += 2
                else:
                    die("unknown option %s in %r" % (o, raw))
            out.append("dest %s %s -> %s %s weight=%s" % (proto, vip, rs, method, weight))
    return out


def set_entry(entry, tokens):
    parts = []
    for p in entry.split(","):
        if ":" in p and re.match(r"^(tcp|udp|sctp|icmp|icmpv6):", p):
            parts.append(p)
        elif "/" in p:
            parts.append(str(ipaddress.ip_network(p, strict=False)))
        elif re.match(r"^\d+$", p):
            parts.append(p)
        else:
            parts.append(tokens.ip(p))
    return ",".join(parts)


def set_lines(text, tokens, items, services):
    members = {}
    for raw in text.splitlines():
        words = raw.split()
        if len(words) < 3 or words[0] != "add":
            continue
        name = words[1]
        meaning = SET_MEANING.get(name)
        if meaning is None:
            m = re.match(r"^SVCPROXY-(?:6-)?(.+)$", name)
            if not m:
                continue  # neither proxy's (none in a fresh node namespace)
            meaning = m.group(1).lower()
        members.setdefault(meaning, set()).add(set_entry(words[2], tokens))
    derived = derivations(items, tokens.dummy_addresses, services)
    out = []
    for meaning, entries in sorted(members.items()):
        if meaning in derived and entries == {set_entry(e, tokens) for e in derived[meaning]}:
            out.append("set %s = %s" % (meaning, DERIVATION_TEXT[meaning]))
        else:
            out.extend("set %s %s" % (meaning, e) for e in entries)
    return out


def normalize(dirname, dummy, items):
    with open(os.path.join(dirname, "addr.json")) as f:
        tokens = Tokens(json.load(f), dummy)
    with open(os.path.join(dirname, "ipvs.save")) as f:
        lines = ipvs_lines(f.read(), tokens)
    lines += ["vip %s" % a for a in tokens.dummy_addresses]
    lines.append("dummy %s" % ("up" if tokens.dummy_up else "down"))
    with open(os.path.join(dirname, "ipset.save")) as f:
        lines += set_lines(f.read(), tokens, items, [l for l in lines if l.startswith("service ")])
    return sorted(set(lines))


def cmd_normalize(args):
    for line in normalize(args.dir, args.dummy, api_items(args.api)):
        print(line)


# --- comparison ---------------------------------------------------------------------------------

class Listed:
    def __init__(self, ident, status, reason, lines):
        self.id, self.status, self.reason, self.lines = ident, status, reason, lines


def load_intended(path):
    """Blocks: '== ID (STATUS)', reason lines, then '  STATE SIDE LINE' lines."""
    listed, cur = [], None
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"^== ([a-z0-9-]+) \((intended|pending|bug)\)$", line)
            if m:
                cur = Listed(m.group(1), m.group(2), [], [])
                listed.append(cur)
                continue
            if cur is None:
                die("%s:%d: text before the first '== ID (STATUS)' line" % (path, n))
            m = re.match(r"^  (\S+) (kube-proxy-only|svc-proxy-only) (.+)$", line)
            if m:
                cur.lines.append(m.groups())
            elif line.startswith("  "):
                die("%s:%d: a difference line is '  STATE kube-proxy-only|svc-proxy-only LINE'" % (path, n))
            else:
                cur.reason.append(line)
    ids = [b.id for b in listed]
    if len(ids) != len(set(ids)):
        die("%s: an ID is used twice" % path)
    for b in listed:
        if not b.lines or not b.reason:
            die("%s: %s needs a reason and at least one difference line" % (path, b.id))
    return listed


def cmd_compare(args):
    items = api_items(args.api)
    maps = attribution(items)
    with open(args.kube_proxy) as f:
        kp = set(l for l in f.read().splitlines() if l)
    with open(args.svc_proxy) as f:
        sp = set(l for l in f.read().splitlines() if l)
    states = load_states(args.states)
    in_round = {s.name for s in states} | {"*"}
    diffs = set()
    for side, only in (("kube-proxy-only", kp - sp), ("svc-proxy-only", sp - kp)):
        for line in only:
            diffs.add((state_of(line, maps), side, line))
    listed = load_intended(args.intended)
    matched = set()
    failed = 0

    # A listed line is due in this round when its state is one of the round's, or "*" (every
    # round). A line about no single state ("*": a whole-set summary, the dummy device) may be
    # listed under the state that brings it about.
    def seen(entry):
        state, side, line = entry
        if entry in diffs:
            return entry
        if ("*", side, line) in diffs and state in in_round:
            return ("*", side, line)
        return None

    for b in listed:
        mine = [l for l in b.lines if l[0] in in_round]
        if not mine:
            continue
        missing = [l for l in mine if seen(l) is None]
        matched.update(seen(l) for l in mine if seen(l) is not None)
        if missing:
            failed += 1
            for l in missing:
                print("FAIL difference %s (%s) is listed but not seen (fixed? then remove it from intended.txt): %s" % (b.id, b.status, " ".join(l)))
        else:
            print("PASS difference %s (%s): %d line(s), as listed" % (b.id, b.status, len(mine)))
    for d in sorted(diffs - matched):
        failed += 1
        print("FAIL %s: a difference not listed in intended.txt: %s %s" % d)
    counts = {}
    for line in kp | sp:
        counts.setdefault(state_of(line, maps), [0, 0])
    for line in kp:
        counts[state_of(line, maps)][0] += 1
    for line in sp:
        counts[state_of(line, maps)][1] += 1
    for s in states:
        n_kp, n_sp = counts.get(s.name, [0, 0])
        ids = sorted({b.id for b in listed for l in b.lines if l[0] == s.name and seen(l)})
        if s.expect_nothing:
            if n_kp or n_sp:
                failed += 1
                print("FAIL %s: expected nothing programmed, kube-proxy has %d line(s), svc-proxy %d" % (s.name, n_kp, n_sp))
            else:
                print("PASS %s: neither proxy programs anything for it" % s.name)
        elif n_kp == 0:
            failed += 1
            print("FAIL %s: kube-proxy programmed nothing for it (was the state applied?)" % s.name)
        else:
            extra = "; listed differences: %s" % ", ".join(ids) if ids else ""
            print("PASS %s: compared (kube-proxy %d line(s), svc-proxy %d)%s" % (s.name, n_kp, n_sp, extra))
    sys.exit(1 if failed else 0)


def cmd_check_doc(args):
    listed = load_intended(args.intended)
    with open(args.doc) as f:
        doc = f.read()
    m = re.search(r"^## Differences from kube-proxy's IPVS mode\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    if not m:
        die("%s has no section '## Differences from kube-proxy's IPVS mode'" % args.doc)
    section = m.group(1)
    in_doc = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M))
    in_file = {b.id for b in listed}
    bad = False
    for ident in sorted(in_file - in_doc):
        print("the doc's table lacks %s (listed in %s)" % (ident, args.intended))
        bad = True
    for ident in sorted(in_doc - in_file):
        print("the doc's table has %s, which %s does not list" % (ident, args.intended))
        bad = True
    for b in listed:
        row = re.search(r"^\| `%s` \| ([a-z]+) \|" % re.escape(b.id), section, re.M)
        if row and row.group(1) != b.status:
            print("%s: the doc says %s, %s says %s" % (b.id, row.group(1), args.intended, b.status))
            bad = True
    sys.exit(1 if bad else 0)


def cmd_selftest(_args):
    """Normalizes the dumps recorded in the VM (fixtures/CASE/{kube-proxy,svc-proxy}/, the API's
    objects in fixtures/CASE/api.json) and compares with the lines that run produced."""
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    failed = 0
    cases = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if not cases:
        die("no fixtures in %s" % base)
    for case in cases:
        items = api_items(os.path.join(base, case, "api.json"))
        for side in ("kube-proxy", "svc-proxy"):
            d = os.path.join(base, case, side)
            with open(os.path.join(d, "dummy")) as f:
                dummy = f.read().strip()
            got = normalize(d, dummy, items)
            with open(os.path.join(d, "expected")) as f:
                want = [l for l in f.read().splitlines() if l]
            name = "%s/%s" % (case, side)
            if got == want:
                print("PASS selftest %s: %d line(s)" % (name, len(got)))
            else:
                failed += 1
                print("FAIL selftest %s: lines only got: %s; lines only expected: %s"
                      % (name, sorted(set(got) - set(want)), sorted(set(want) - set(got))))
    sys.exit(1 if failed else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rounds")
    r.add_argument("--isolate", action="store_true", help="one round per state")
    r.add_argument("states", nargs="+")
    r.set_defaults(func=cmd_rounds)
    r = sub.add_parser("prepare")
    r.add_argument("out")
    r.add_argument("states", nargs="+")
    r.set_defaults(func=cmd_prepare)
    r = sub.add_parser("settled")
    r.add_argument("api")
    r.set_defaults(func=cmd_settled)
    r = sub.add_parser("normalize")
    r.add_argument("--dummy", required=True)
    r.add_argument("--api", required=True)
    r.add_argument("dir")
    r.set_defaults(func=cmd_normalize)
    r = sub.add_parser("compare")
    r.add_argument("--api", required=True)
    r.add_argument("--intended", required=True)
    r.add_argument("--states", nargs="+", required=True)
    r.add_argument("--kube-proxy", required=True, help="kube-proxy's normalized lines")
    r.add_argument("--svc-proxy", required=True, help="svc-proxy's normalized lines")
    r.set_defaults(func=cmd_compare)
    r = sub.add_parser("check-doc")
    r.add_argument("intended")
    r.add_argument("doc")
    r.set_defaults(func=cmd_check_doc)
    r = sub.add_parser("selftest")
    r.set_defaults(func=cmd_selftest)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

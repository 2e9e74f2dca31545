#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/ (committed; run again
after changing an input layout). Inputs follow the layout in fuzz/src/lib.rs: fixed fields, then
chunks (big-endian u16 length + bytes). DNS messages and protobuf messages are encoded by hand
here so the seeds need nothing but Python."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


# --- DNS ---------------------------------------------------------------------------------------

def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def opt(payload=1232, do=False, version=0):
    return b"\0" + struct.pack(">HHBBHH", 41, payload, 0, version, 0x8000 if do else 0, 0)


def query(n, qtype=1, qid=0x1234, edns=False, do=False, rd=True, opcode=0, qclass=1, version=0):
    flags = (opcode << 11) | (0x0100 if rd else 0) | 0
    q = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    q += name(n) + struct.pack(">HH", qtype, qclass)
    if edns:
        q += opt(4096, do, version)
    return q


def rr(owner, rtype, ttl, rdata, cls=1):
    return owner + struct.pack(">HHIH", rtype, cls, ttl, len(rdata)) + rdata


QPTR = b"\xc0\x0c"  # the question name


def response(n, qtype, answers=(), authority=(), additional=(), rcode=0, qid=0x1234, aa=True, tc=False):
    flags = 0x8000 | (0x0400 if aa else 0) | (0x0200 if tc else 0) | 0x0100 | 0x0080 | rcode
    msg = struct.pack(">HHHHHH", qid, flags, 1, len(answers), len(authority), len(additional))
    msg += name(n) + struct.pack(">HH", qtype, 1)
    for r in list(answers) + list(authority) + list(additional):
        msg += r
    return msg


def a(ip):
    return bytes(int(x) for x in ip.split("."))


def soa(zone="cluster.local.", ttl=5, minimum=5):
    rdata = name("ns.dns." + zone) + name("hostmaster." + zone) + struct.pack(">IIIII", 42, 7200, 1800, 86400, minimum)
    return rr(name(zone), 6, ttl, rdata)


WEB = "web.ns1.svc.cluster.local."
RESPONSES = {
    "a": response(WEB, 1, [rr(QPTR, 1, 5, a("10.0.0.1"))]),
    "a_opt": response(WEB, 1, [rr(QPTR, 1, 30, a("10.0.0.1"))], additional=[opt()]),
    "aaaa": response(WEB, 28, [rr(QPTR, 28, 5, bytes(15) + b"\1")]),
    "nxdomain": response("nope.ns1.svc.cluster.local.", 1, authority=[soa()], rcode=3),
    "nodata": response(WEB, 16, authority=[soa(ttl=60, minimum=5)]),
    "cname": response("alias.ns1.svc.cluster.local.", 1,
                      [rr(QPTR, 5, 5, name(WEB)), rr(name(WEB), 1, 5, a("10.0.0.1"))]),
    "srv": response("_http._tcp.web.ns1.svc.cluster.local.", 33,
                    [rr(QPTR, 33, 5, struct.pack(">HHH", 0, 100, 80) + name(WEB))],
                    additional=[rr(name(WEB), 1, 5, a("10.0.0.1"))]),
    "big": response(WEB, 1, [rr(QPTR, 1, 300, a("10.0.%d.%d" % (i // 250, i % 250))) for i in range(60)],
                    additional=[opt()]),
    "servfail": response(WEB, 1, rcode=2),
    "truncated": response(WEB, 1, tc=True),
    "ptr": response("1.0.0.10.in-addr.arpa.", 12, [rr(QPTR, 12, 5, name(WEB))]),
}
QUERIES = {
    "a": query(WEB),
    "a_edns_do": query(WEB, edns=True, do=True),
    "aaaa_upper": query("WEB.Ns1.SVC.cluster.LOCAL.", 28),
    "srv": query("_http._tcp.web.ns1.svc.cluster.local.", 33, edns=True),
    "ptr": query("1.0.0.10.in-addr.arpa.", 12),
    "nxdomain": query("nope.ns1.svc.cluster.local."),
    "external": query("example.com.", 1, edns=True),
    "txt": query(WEB, 16),
    "cname": query("alias.ns1.svc.cluster.local."),
    "root": query(".", 2),
}


# --- protobuf (proto/nodedns/v1/authority.proto) ---------------------------------------------------

def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """An int is a varint field; bytes or str a length-delimited one."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def pod(ip, podname, search, node_search=2, ndots=5, host_network=False, shared=False):
    out = field(1, ip) + field(2, "ns1") + field(3, podname)
    if host_network:
        out += field(4, True)
    for s in search:
        out += field(5, s)
    out += field(6, node_search)
    if ndots is not None:
        out += field(7, ndots)
    if shared:
        out += field(8, True)
    return out


FIRST = ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"]


def subscribe_snapshot(revision, pods, zones=("cluster.local.", "10.in-addr.arpa.")):
    snap = b"".join(field(1, p) for p in pods) + b"".join(field(2, z) for z in zones)
    snap += field(3, "cluster.local.") + field(4, 1024)
    return field(1, revision) + field(2, snap)


def subscribe_update(revision, upserted=(), removed=(), names=(), subtrees=(), zones=()):
    u = b"".join(field(1, p) for p in upserted) + b"".join(field(2, r) for r in removed)
    u += b"".join(field(3, n) for n in names) + b"".join(field(4, s) for s in subtrees)
    u += b"".join(field(5, z) for z in zones)
    return field(1, revision) + field(3, u)


def subscribe_draining(revision, seconds):
    return field(1, revision) + field(5, field(1, seconds))


def resolve_response(rid, status, resp=b"", revision=1):
    return field(1, rid) + field(2, status) + field(3, resp) + field(4, revision)


def resolve_request(rid, q, client_ip, transport):
    return field(1, rid) + field(2, q) + field(3, client_ip) + field(4, transport)


# --- seeds per target ---------------------------------------------------------------------------

def chunk(b):
    return struct.pack(">H", len(b)) + b


def write(target, seeds):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.remove(os.path.join(d, old))
    for seed_name, data in seeds.items():
        with open(os.path.join(d, seed_name), "wb") as f:
            f.write(data)


def main():
    write("query_parse", {k: struct.pack(">H", 0x5555) + q for k, q in QUERIES.items()})

    cache = {}
    pairs = [("a", "a"), ("a_edns_do", "a_opt"), ("aaaa_upper", "aaaa"), ("nxdomain", "nxdomain"),
             ("txt", "nodata"), ("cname", "cname"), ("srv", "srv"), ("a", "big"), ("ptr", "ptr"),
             ("a", "servfail"), ("a", "truncated")]
    for i, (q, r) in enumerate(pairs):
        flags = [0, 1, 3, 5, 7][i % 5]
        cache[f"{q}-{r}"] = bytes([flags]) + struct.pack(">H", [0, 3, 40][i % 3]) + chunk(QUERIES[q]) + chunk(RESPONSES[r])
    write("cache_hit", cache)

    node_search = ["corp.example"]

    def ap(q, hit, pod_search, flags=0x68, ndots=5, node_ndots=1):
        counts = len(pod_search) | (len(node_search) << 4)
        out = bytes([flags, ndots, node_ndots, counts]) + chunk(q) + chunk(hit)
        return out + b"".join(chunk(s.encode()) for s in pod_search + node_search)

    write("autopath", {
        "first_expansion": ap(query("web.ns1.ns1.svc.cluster.local."), RESPONSES["a"], FIRST),
        "dotted_name": ap(query("example.com.ns1.svc.cluster.local.", 28), RESPONSES["aaaa"], FIRST),
        "node_before": ap(query("db.corp.example."), RESPONSES["nxdomain"], FIRST, flags=0x64),
        "host_network": ap(query("web.ns1.svc.cluster.local."), RESPONSES["a"], FIRST, flags=0x69),
        "custom": ap(query("web.corp.example.", 1), RESPONSES["cname"], ["corp.example", "ns1.svc.cluster.local"],
                     flags=0x60, ndots=2),
    })

    p1 = pod(bytes([10, 1, 0, 9]), "p1", FIRST)
    p2 = pod(bytes([10, 1, 0, 12]), "p2", FIRST, ndots=None)
    host = pod(bytes([192, 168, 1, 10]), "host", FIRST, host_network=True)
    v6 = pod(bytes([0xfd, 0, 0, 1] + [0] * 11 + [9]), "p1", FIRST)

    def frames(*fs):
        return b"".join(chunk(bytes([kind]) + body) for kind, body in fs)

    write("grpc_messages", {
        "snapshot": frames((0, subscribe_snapshot(5, [p1, host, v6]))),
        "snapshot_update": frames((0, subscribe_snapshot(5, [p1, host])),
                                  (0, subscribe_update(6, upserted=[p2], removed=[bytes([10, 1, 0, 9])],
                                                       names=[WEB]))),
        "notices": frames((0, subscribe_update(2, names=[WEB, "ns1.svc.cluster.local.", "x.nope.ns1.svc.cluster.local."])),
                          (0, subscribe_update(3, subtrees=["10.in-addr.arpa."], zones=["cluster.local."]))),
        "draining": frames((0, subscribe_update(2, names=[WEB])), (0, subscribe_draining(2, 10))),
        "resolve": frames((1, resolve_response(1, 1, RESPONSES["a"])), (3, resolve_response(9, 1, RESPONSES["nxdomain"])),
                          (5, resolve_response(2, 2))),
    })

    def rp(flags, client, q, *fs, ages=(1, 0, 40)):
        out = bytes([flags, client, ages[0]]) + struct.pack(">H", ages[1] << 8 | ages[2]) + chunk(q)
        return out + b"".join(chunk(f) for f in fs)

    write("request_path", {
        "cluster_a": rp(0, 0, QUERIES["a"]),
        "cluster_tcp_edns": rp(4, 0, QUERIES["a_edns_do"]),
        "autopath_hit": rp(1, 0, query("web.ns1.ns1.svc.cluster.local.")),
        "autopath_walk_nx": rp(1, 0, query("example.com.ns1.svc.cluster.local.", 28)),
        "autopath_custom": rp(1, 3, query("web.corp.example.")),
        "host_network": rp(1, 2, query("web.ns1.ns1.svc.cluster.local.")),
        "external": rp(0, 4, QUERIES["external"]),
        "ptr": rp(0, 1, QUERIES["ptr"]),
        "fuzzed_answer": rp(0, 0, QUERIES["a"], resolve_response(0, 1, RESPONSES["big"])),
        "not_ready": rp(0, 0, QUERIES["a"], resolve_response(0, 2)),
        "short_answer": rp(0, 0, QUERIES["a"], resolve_response(0, 1, b"\x12\x34\x81")),
        "servfail_then_stale": rp(0, 0, QUERIES["a"], b"", resolve_response(0, 1, RESPONSES["servfail"]),
                                  ages=(10, 0, 200)),
        "malformed": rp(0, 0, QUERIES["a"][:20]),
        "badvers": rp(0, 0, query(WEB, edns=True, version=1)),
        "chaos": rp(0, 0, query(WEB, qclass=3)),
    })

    write("authority_query", {
        "a": b"\0" + QUERIES["a"],
        "aaaa_edns": b"\0" + query(WEB, 28, edns=True),
        "srv": b"\0" + QUERIES["srv"],
        "ptr": b"\0" + QUERIES["ptr"],
        "headless": b"\0" + query("db.ns1.svc.cluster.local."),
        "named_endpoint": b"\0" + query("db-0.db.ns1.svc.cluster.local.", 255),
        "externalname_loop": b"\0" + query("loop.ns1.svc.cluster.local."),
        "pod": b"\1" + query("10-1-0-9.ns1.pod.cluster.local."),
        "wildcard": b"\1" + query("*.ns1.svc.cluster.local.", 33),
        "dns_version": b"\0" + query("dns-version.cluster.local.", 16),
        "axfr_tcp_inside": b"\6" + query("cluster.local.", 252),
        "axfr_udp": b"\4" + query("cluster.local.", 252),
        "notify": b"\0" + query(WEB, opcode=4),
        "outside": b"\0" + QUERIES["external"],
        "resolve_request": b"\0" + resolve_request(3, QUERIES["a"], bytes([10, 1, 0, 9]), 2),
    })


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Kafka I/O for the end-to-end job tests (e2e/tests/jobs.rs), with the
pure-Python kafka-python client (no librdkafka build in the e2e crate).

  kafka_io.py produce --bootstrap B --topic T < records.jsonl
      each line {"partition": P, "value": "<utf-8 text>"}; sent in order,
      acks=all, flushed before exit. --rate N paces the sends at N records/s
      (stdin is read as it goes); --stamp F sets the JSON value's field F to
      the wall clock (ms) at the send: event time that is arrival time.
  kafka_io.py dump --bootstrap B --topic T
      everything committed in T (read_committed), one JSON line per record:
      {"partition", "offset", "key", "value", "headers": {name: value}};
      stops once every partition's position reaches the end it had at start.
  kafka_io.py partitions --bootstrap B --topic T
      the number of partitions of T.
  kafka_io.py grant --bootstrap B --principal User:U --prefix P...
      (as the plaintext super user) the prefixed ACLs a namespace's user
      needs: on topics and on the job's group and transactional ids starting
      with each P, and DescribeConfigs on the cluster; see the README's
      Tenancy section.
  kafka_io.py probe --bootstrap B --auth DIR --user U --via scram|cert
                    [--topic T] [--write T] [--group G] [--transactional-id X]
      as user U (SCRAM-SHA-512 over TLS, or a TLS client certificate, from
      the files cluster.sh wrote in DIR) tries each: list T's offsets, produce
      to T, commit an offset for group G, initialise a transactional producer
      with id X (which fences its current owner); prints one JSON object
      {what: "ok" | the error's name}.
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def produce(a):
    p = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", linger_ms=5)
    n = 0
    start = time.monotonic()
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        if a.rate:
            ahead = n / a.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        value = r["value"]
        if a.stamp:
            v = json.loads(value)
            v[a.stamp] = int(time.time() * 1000)
            value = json.dumps(v)
        p.send(a.topic, value=value.encode(), partition=r["partition"])
        n += 1
    p.flush(timeout=60)
    p.close()
    print(n)


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def dump(a):
    c = KafkaConsumer(bootstrap_servers=a.bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False, auto_offset_reset="earliest")
    parts = c.partitions_for_topic(a.topic)
    if not parts:
        sys.exit(f"topic {a.topic} not found")
    tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    deadline = time.time() + a.timeout
    out = sys.stdout
    while any(c.position(tp) < end[tp] for tp in tps):
        if time.time() > deadline:
            sys.exit(f"timed out reading {a.topic}: positions "
                     f"{[c.position(tp) for tp in tps]}, ends {[end[tp] for tp in tps]}")
        for tp, msgs in c.poll(timeout_ms=500).items():
            for m in msgs:
                out.write(json.dumps({
                    "partition": m.partition, "offset": m.offset, "key": text(m.key),
                    "value": text(m.value), "headers": {k: text(v) for k, v in (m.headers or [])},
                }) + "\n")
    out.flush()


def partitions(a):
    c = KafkaConsumer(bootstrap_servers=a.bootstrap)
    print(len(c.partitions_for_topic(a.topic) or []))
    c.close()


def grant(a):
    from kafka.admin import (ACL, ACLOperation as Op, ACLPermissionType, ACLResourcePatternType,
                             KafkaAdminClient, ResourcePattern, ResourceType)
    allow = ACLPermissionType.ALLOW
    prefixed = ACLResourcePatternType.PREFIXED
    topic_ops = [Op.CREATE, Op.DELETE, Op.DESCRIBE, Op.DESCRIBE_CONFIGS, Op.ALTER,
                 Op.ALTER_CONFIGS, Op.READ, Op.WRITE]
    acls = []
    for prefix in a.prefix:
        for kind, ops in [(ResourceType.TOPIC, topic_ops),
                          (ResourceType.GROUP, [Op.READ, Op.DESCRIBE]),
                          (ResourceType.TRANSACTIONAL_ID, [Op.WRITE, Op.DESCRIBE])]:
            acls += [ACL(a.principal, "*", op, allow, ResourcePattern(kind, prefix, prefixed))
                     for op in ops]
    acls.append(ACL(a.principal, "*", Op.DESCRIBE_CONFIGS, allow,
                    ResourcePattern(ResourceType.CLUSTER, "kafka-cluster")))
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap)
    result = admin.create_acls(acls)
    if result["failed"]:
        sys.exit(f"creating ACLs failed: {result['failed']}")
    admin.close()
    print(len(acls))


def credentials(a):
    """Client settings for user a.user over a.via, from cluster.sh's files."""
    d = a.auth.rstrip("/")
    kw = {"bootstrap_servers": a.bootstrap, "ssl_cafile": f"{d}/ca.crt"}
    if a.via == "scram":
        with open(f"{d}/{a.user}.password") as f:
            password = f.read().strip()
        kw.update(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                  sasl_plain_username=a.user, sasl_plain_password=password)
    else:
        kw.update(security_protocol="SSL", ssl_certfile=f"{d}/{a.user}.crt",
                  ssl_keyfile=f"{d}/{a.user}.key")
    return kw


def probe(a):
    from kafka.structs import OffsetAndMetadata
    kw = credentials(a)
    out = {}

    def attempt(what, action):
        try:
            action()
            out[what] = "ok"
        except Exception as e:  # the error's name is the answer
            out[what] = type(e).__name__

    if a.topic:
        def read():
            c = KafkaConsumer(enable_auto_commit=False, request_timeout_ms=15000, **kw)
            try:
                c.end_offsets([TopicPartition(a.topic, 0)])
            finally:
                c.close()
        attempt("read", read)
    if a.write:
        def write():
            p = KafkaProducer(max_block_ms=15000, **kw)
            try:
                p.send(a.write, value=b"probe", partition=0).get(timeout=15)
            finally:
                p.close(timeout=5)
        attempt("write", write)
    if a.group:
        def commit():
            c = KafkaConsumer(group_id=a.group, enable_auto_commit=False,
                              request_timeout_ms=15000, **kw)
            try:
                c.commit({TopicPartition(a.topic or a.write, 0): OffsetAndMetadata(0, "", -1)})
            finally:
                c.close()
        attempt("group", commit)
    if a.transactional_id:
        def fence():
            p = KafkaProducer(transactional_id=a.transactional_id, max_block_ms=15000, **kw)
            try:
                p.init_transactions()
            finally:
                p.close(timeout=5)
        attempt("fence", fence)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["produce", "dump", "partitions", "grant", "probe"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--rate", type=float)
    ap.add_argument("--stamp")
    ap.add_argument("--principal")
    ap.add_argument("--prefix", action="append", default=[])
    ap.add_argument("--auth")
    ap.add_argument("--user")
    ap.add_argument("--via", choices=["scram", "cert"])
    ap.add_argument("--write")
    ap.add_argument("--group")
    ap.add_argument("--transactional-id")
    a = ap.parse_args()
    if a.cmd in ("produce", "dump", "partitions") and not a.topic:
        ap.error(f"{a.cmd} needs --topic")
    if a.cmd == "grant" and not (a.principal and a.prefix):
        ap.error("grant needs --principal and --prefix")
    if a.cmd == "probe" and not (a.auth and a.user and a.via):
        ap.error("probe needs --auth, --user and --via")
    {"produce": produce, "dump": dump, "partitions": partitions, "grant": grant,
     "probe": probe}[a.cmd](a)


if __name__ == "__main__":
    main()

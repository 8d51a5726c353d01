#!/usr/bin/env python3
"""Write a single-layer container image as a docker-archive tarball, without Docker.

The result (manifest.json + config + one layer tar) is what `docker save`
writes; `docker load`, `ctr images import` and `kind load image-archive`
read it.

    mkimage.py --tag localhost/x:dev --out x.tar \
        --file /path/to/bin:/usr/local/bin/x --with-libs \
        --entrypoint /usr/local/bin/x --user 65532:65532 --nonroot-files \
        --ca-certs

--with-libs copies the ELF dynamic loader and every library `ldd` reports for
each --file into the layer, at the same absolute path as on the host, so a
glibc-dynamic binary runs in an otherwise empty image.
"""

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time

EPOCH = 0  # reproducible: fixed mtimes


def die(msg):
    print(f"mkimage: error: {msg}", file=sys.stderr)
    sys.exit(1)


def ldd_libs(path):
    """Absolute paths of the shared libraries (and the loader) `path` needs."""
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True)
    except FileNotFoundError:
        die("ldd not found (install libc-bin)")
    text = out.stdout + out.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if out.returncode != 0:
        die(f"ldd {path} failed: {text.strip()}")
    libs = []
    for line in text.splitlines():
        line = line.strip()
        if "not found" in line:
            die(f"{path}: library missing on the host: {line}")
        m = re.match(r"^\S+ => (/\S+) \(0x", line) or re.match(r"^(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _info(self, name, kind, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(name.lstrip("/"))
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.mtime = EPOCH
        return ti

    def dir(self, path, mode=0o755, uid=0, gid=0):
        path = path.rstrip("/")
        if not path or path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        self.tar.addfile(self._info(path + "/", tarfile.DIRTYPE, mode, uid, gid))

    def data(self, path, content, mode=0o644):
        if path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(content)
        self.tar.addfile(ti, io.BytesIO(content))

    def symlink(self, path, target):
        if path in self.seen:
            return
        self.dir(os.path.dirname(path))
        self.seen.add(path)
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.tar.addfile(ti)

    def host_file(self, src, dest, mode=None):
        """Copy a host file; if `dest` is a symlink chain on the host (libraries),
        copy the links and the final file so both names resolve."""
        if os.path.islink(src) and src == dest:
            target = os.readlink(src)
            self.symlink(dest, target)
            real = os.path.normpath(os.path.join(os.path.dirname(src), target))
            self.host_file(real, real, mode)
            return
        with open(src, "rb") as f:
            content = f.read()
        st = os.stat(src)
        self.data(dest, content, mode if mode is not None else (st.st_mode & 0o7777))

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, action="append", help="image reference, repeatable")
    ap.add_argument("--out", required=True, help="output tarball (docker-archive)")
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST",
                    help="host file to copy into the image (repeatable)")
    ap.add_argument("--with-libs", action="store_true",
                    help="also copy the ldd libraries + dynamic loader of every --file")
    ap.add_argument("--entrypoint", action="append", default=[], help="entrypoint argv element (repeatable)")
    ap.add_argument("--cmd", action="append", default=[], help="default argument (repeatable)")
    ap.add_argument("--user", default="", help="uid:gid to run as, e.g. 65532:65532")
    ap.add_argument("--nonroot-files", action="store_true",
                    help="write /etc/passwd and /etc/group with root and nonroot (65532)")
    ap.add_argument("--ca-certs", action="store_true",
                    help="copy the host's /etc/ssl/certs/ca-certificates.crt")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    a = ap.parse_args()

    layer = Layer()
    layer.dir("/etc")
    if a.nonroot_files:
        layer.data("/etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n"
                                  b"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
        layer.data("/etc/group", b"root:x:0:\nnonroot:x:65532:\n")
        layer.dir("/home/nonroot", 0o700, 65532, 65532)
    if a.ca_certs:
        ca = "/etc/ssl/certs/ca-certificates.crt"
        if not os.path.isfile(ca):
            die(f"{ca} missing on the host (install ca-certificates)")
        layer.host_file(ca, ca, 0o644)

    for spec in a.file:
        if ":" not in spec:
            die(f"--file wants SRC:DEST, got {spec!r}")
        src, dest = spec.split(":", 1)
        if not os.path.isfile(src):
            die(f"no such file: {src}")
        layer.host_file(os.path.realpath(src), dest)
        if a.with_libs:
            for lib in ldd_libs(src):
                layer.host_file(lib, lib, None)

    # Libraries are written at the literal paths ldd prints (/lib64/ld-linux-x86-64.so.2,
    # /lib/x86_64-linux-gnu/libc.so.6): on a merged-/usr host those go through
    # symlinks, in the image they are plain directories. Self-consistent either way.
    blob = layer.bytes()
    diff_id = "sha256:" + hashlib.sha256(blob).hexdigest()

    env = ["PATH=/usr/local/bin:/usr/bin:/bin"] + a.env
    if a.ca_certs:
        env.append("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
        "config": {
            "Env": env,
            "Entrypoint": a.entrypoint or None,
            "Cmd": a.cmd or None,
            "User": a.user,
            "WorkingDir": "/",
            "Labels": dict(kv.split("=", 1) for kv in a.label) or None,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH)),
                     "created_by": "e2e/images/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":", 1)[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": a.tag, "Layers": [layer_name]}]

    tmp = a.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        def add(name, content):
            ti = tarfile.TarInfo(name)
            ti.size = len(content)
            ti.mtime = EPOCH
            ti.mode = 0o644
            out.addfile(ti, io.BytesIO(content))
        d = tarfile.TarInfo(layer_name.split("/")[0])
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        out.addfile(d)
        add(layer_name, blob)
        add(config_name, config_bytes)
        add("manifest.json", json.dumps(manifest).encode())
        add("repositories", json.dumps({t.rsplit(":", 1)[0]: {t.rsplit(":", 1)[1]: diff_id.split(":")[1]}
                                        for t in a.tag}).encode())
    os.replace(tmp, a.out)
    print(f"mkimage: wrote {a.out} ({', '.join(a.tag)}; layer {len(blob) // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()

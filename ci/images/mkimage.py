#!/usr/bin/env python3
"""Writes a container image archive from a directory, reproducibly.

Usage: mkimage.py --name REF [--entrypoint JSON] [--cmd JSON] [--env K=V]...
                  [--workdir DIR] [--port N/tcp]... ROOTFS OUT.tar

The archive is both an OCI image layout (oci-layout, index.json, blobs/)
and a `docker save` archive (manifest.json naming the same blobs), so
`ctr images import`, `docker load` and `kubestrap image load` all take it.
One uncompressed layer; every file owned by root, mtime 0, sorted: the same
directory gives the same bytes.
"""
import argparse
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_bytes(root):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        paths = []
        for d, dirs, files in os.walk(root):
            dirs.sort()
            for n in sorted(dirs + files):
                paths.append(os.path.join(d, n))
        for p in sorted(paths, key=lambda p: os.path.relpath(p, root)):
            rel = os.path.relpath(p, root)
            info = t.gettarinfo(p, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(p, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)
    return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--port", action="append", default=[])
    ap.add_argument("rootfs")
    ap.add_argument("out")
    a = ap.parse_args()
    layer = layer_bytes(a.rootfs)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"] + a.env, "WorkingDir": a.workdir},
        "rootfs": {"type": "layers", "diff_ids": [blob(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "ci/images/mkimage.py"}],
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["config"]["Cmd"] = json.loads(a.cmd)
    if a.port:
        config["config"]["ExposedPorts"] = {p: {} for p in a.port}
    config_b = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config_b), "size": len(config_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(layer), "size": len(layer)}],
    }
    manifest_b = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    tag = a.name.rsplit(":", 1)[1] if ":" in a.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(manifest_b),
            "size": len(manifest_b),
            "annotations": {"io.containerd.image.name": a.name, "org.opencontainers.image.ref.name": tag},
        }],
    }
    path = lambda d: "blobs/sha256/" + d.split(":", 1)[1]
    docker = [{"Config": path(blob(config_b)), "RepoTags": [a.name], "Layers": [path(blob(layer))]}]
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
        "manifest.json": json.dumps(docker).encode(),
        path(blob(layer)): layer,
        path(blob(config_b)): config_b,
        path(blob(manifest_b)): manifest_b,
    }
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["blobs", "blobs/sha256"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            t.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            t.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, a.out)
    print(f"{a.out} {a.name} {blob(manifest_b)}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks the deployment recipes in deploy/ without Docker, systemd or a cluster.

    python3 deploy/check.py [path/to/quiesce]

Always (needs python3 with PyYAML):
  - every YAML file parses; the manifests have the kinds expected;
  - the stop budgets agree: Kubernetes' terminationGracePeriodSeconds is above
    preStop + the shutdown timeout, systemd's TimeoutStopSec and compose's
    stop_grace_period are above the shutdown timeout;
  - the listen address is reachable from outside the container (0.0.0.0) in
    the Dockerfile and the manifests, the data dir is a subdirectory of the
    mounted volume in the manifests, the probes are on /livez and /readyz;
  - with the binary (argument, or $QUIESCE_BIN, or target/release/quiesce):
    every QUIESCE_* variable the recipes set is one `quiesce serve --help`
    lists (the PostgreSQL ones of issue 11 are reported while missing).
When installed (each skipped loudly otherwise): hadolint on the Dockerfile,
`systemd-analyze verify` on the unit, kubernetes-validate --strict on the
manifests, check-jsonschema's compose-spec schema on compose.yaml.

Exit status 1 when a check fails.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
failures = []
skipped = []

# Variables the recipes may set that no build lacks any more (kept for
# recipes ahead of the binary).
PENDING_ENV = set()


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def ok(msg):
    print(f"ok   {msg}")


def seconds(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|min)?\s*", str(text))
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return {"ms": n / 1000, "s": n, "m": n * 60, "min": n * 60}[unit]


def path(*parts):
    return os.path.join(HERE, *parts)


def read(*parts):
    with open(path(*parts), encoding="utf-8") as f:
        return f.read()


def binary_help(binary):
    if not binary or not os.access(binary, os.X_OK):
        return None
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True)
    return out.stdout


def help_defaults(help_text):
    """QUIESCE_* variable -> its default (None when it has none)."""
    found = {}
    for m in re.finditer(r"\[env: (QUIESCE_[A-Z_]+)(?:=[^\]]*)?\](?: \[default: ([^\]]+)\])?", help_text):
        found[m.group(1)] = m.group(2)
    return found


def run_tool(name, argv, what):
    if shutil.which(argv[0]) is None:
        skipped.append(f"{name}: {argv[0]} not installed")
        print(f"SKIP {what}: {argv[0]} not installed")
        return
    out = subprocess.run(argv, capture_output=True, text=True)
    # systemd-analyze verify exits 0 on warnings: any output is a finding.
    noisy = name == "systemd-analyze" and (out.stdout.strip() or out.stderr.strip())
    if out.returncode != 0 or noisy:
        fail(f"{what}:\n{out.stdout}{out.stderr}")
    else:
        ok(what)


def container(doc):
    return doc["spec"]["template"]["spec"]["containers"][0]


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def main():
    binary = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get("QUIESCE_BIN") \
        or os.path.join(ROOT, "target", "release", "quiesce")
    help_text = binary_help(binary)
    defaults = help_defaults(help_text) if help_text else {}
    if help_text is None:
        skipped.append(f"variables against --help: no binary at {binary}")
        print(f"SKIP variables against --help: no binary at {binary} (build it, or pass its path)")
    default_shutdown = seconds(defaults.get("QUIESCE_SHUTDOWN_TIMEOUT") or "25s")
    used_env = set()

    # Dockerfile
    dockerfile = read("Dockerfile")
    used_env |= set(re.findall(r"\b(QUIESCE_[A-Z_]+)=", dockerfile))
    if "QUIESCE_LISTEN=0.0.0.0:8080" not in dockerfile or "EXPOSE 8080" not in dockerfile:
        fail("Dockerfile: must listen on 0.0.0.0:8080 and EXPOSE 8080")
    elif not re.search(r'^ENTRYPOINT \["/usr/local/bin/quiesce", "serve"\]$', dockerfile, re.M):
        fail("Dockerfile: the entrypoint must be the binary in exec form")
    elif not re.search(r"^USER 10001:10001$", dockerfile, re.M) or "STOPSIGNAL SIGTERM" not in dockerfile:
        fail("Dockerfile: numeric non-root USER and STOPSIGNAL SIGTERM expected")
    else:
        ok("Dockerfile: 0.0.0.0:8080, exec-form entrypoint, USER 10001, STOPSIGNAL SIGTERM")
    run_tool("hadolint", ["hadolint", path("Dockerfile")], "hadolint Dockerfile")

    # systemd
    unit = read("systemd", "quiesce.service")
    settings = {}
    for line in unit.splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            settings.setdefault(m.group(1), []).append(m.group(2))
    for e in settings.get("Environment", []):
        used_env.add(e.split("=", 1)[0])
    shutdown = default_shutdown
    for e in settings.get("Environment", []):
        if e.startswith("QUIESCE_SHUTDOWN_TIMEOUT="):
            shutdown = seconds(e.split("=", 1)[1])
    stop = seconds(settings["TimeoutStopSec"][0])
    if stop <= shutdown:
        fail(f"systemd: TimeoutStopSec {stop}s must be above the shutdown timeout {shutdown}s")
    else:
        ok(f"systemd: TimeoutStopSec {stop}s > shutdown timeout {shutdown}s")
    for key, want in [("Type", "notify"), ("Restart", "on-failure"), ("KillSignal", "SIGTERM"),
                      ("StateDirectory", "quiesce"), ("StateDirectoryMode", "0700")]:
        if settings.get(key) != [want]:
            fail(f"systemd: {key}={want} expected, found {settings.get(key)}")
    with tempfile.TemporaryDirectory() as tmp:
        # verify wants the ExecStart binary to exist: point it at this build's.
        exe = binary if help_text else shutil.which("true")
        copy = os.path.join(tmp, "quiesce.service")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(unit.replace("ExecStart=/usr/local/bin/quiesce", f"ExecStart={exe}"))
        run_tool("systemd-analyze", ["systemd-analyze", "verify", copy], "systemd-analyze verify quiesce.service")

    # Kubernetes
    for name, kinds, listen in [
            ("sqlite-statefulset.yaml", ["StatefulSet", "Service"], "0.0.0.0:8080"),
            ("postgres-deployment.yaml", ["Deployment", "Service", "PodDisruptionBudget"], "0.0.0.0:8080"),
            # The sidecar pattern: the API on the pod's loopback, for the app beside it.
            ("sidecar-pod.yaml", ["StatefulSet"], "127.0.0.1:8080")]:
        with open(path("kubernetes", name), encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        found = [d["kind"] for d in docs]
        if found != kinds:
            fail(f"{name}: kinds {found}, expected {kinds}")
            continue
        work = docs[0]
        c = container(work)
        env = env_of(c)
        used_env |= set(env)
        shutdown = seconds(env.get("QUIESCE_SHUTDOWN_TIMEOUT") or f"{default_shutdown}s")
        drain = seconds(env.get("QUIESCE_DRAIN_DELAY") or "0s")
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        pre_stop = seconds(pre[1]) if pre[:1] == ["sleep"] else 0
        grace = work["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        if grace <= pre_stop + shutdown:
            fail(f"{name}: terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + shutdown {shutdown}s")
        elif drain >= shutdown:
            fail(f"{name}: the drain delay must be below the shutdown timeout")
        else:
            ok(f"{name}: grace {grace}s > preStop {pre_stop}s + shutdown timeout {shutdown}s (drain delay {drain}s)")
        probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in
                  ("startupProbe", "livenessProbe", "readinessProbe")}
        if probes != {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}:
            fail(f"{name}: probes {probes}")
        if env.get("QUIESCE_LISTEN") != listen:
            fail(f"{name}: QUIESCE_LISTEN must be {listen}")
        if listen.startswith("0.0.0.0") and not (
                env.get("QUIESCE_TOKENS_FILE") and env.get("QUIESCE_TLS_CERT") and env.get("QUIESCE_TLS_KEY")):
            fail(f"{name}: a listener on the pod IP needs QUIESCE_TOKENS_FILE, QUIESCE_TLS_CERT and QUIESCE_TLS_KEY")
        for var, mount in (("QUIESCE_TLS_CERT", "tls"), ("QUIESCE_TLS_KEY", "tls"), ("QUIESCE_TOKENS_FILE", "tokens")):
            value = env.get(var)
            mounted = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}.get(mount)
            if value and not (mounted and value.startswith(mounted + "/")):
                fail(f"{name}: {var}={value} is not on the {mount!r} volume")
        probe_ports = {c.get(p, {}).get("httpGet", {}).get("port") for p in
                       ("startupProbe", "livenessProbe", "readinessProbe")}
        if probe_ports != {"admin"} or env.get("QUIESCE_ADMIN_LISTEN") != "0.0.0.0:9090":
            fail(f"{name}: probes must use the admin listener on 0.0.0.0:9090, found {probe_ports}")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        data_dir = env.get("QUIESCE_DATA_DIR", "")
        if not data_dir.startswith(mounts.get("data", "?") + "/"):
            fail(f"{name}: QUIESCE_DATA_DIR {data_dir!r} must be a subdirectory of the data volume")
        pod_sc = work["spec"]["template"]["spec"].get("securityContext", {})
        sc = c.get("securityContext", {})
        if not (pod_sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem")):
            fail(f"{name}: runAsNonRoot and readOnlyRootFilesystem expected")
        if work["kind"] == "Deployment":
            raw = {e["name"]: e for e in c.get("env", [])}
            url = raw.get("QUIESCE_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
            replica = raw.get("QUIESCE_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {})
            if work["spec"]["replicas"] != 3 or not url or replica.get("fieldPath") != "metadata.name":
                fail(f"{name}: replicas 3, QUIESCE_DATABASE_URL from a Secret and "
                     "QUIESCE_REPLICA_ID from the pod name expected")
        if work["kind"] == "StatefulSet" and work["spec"]["replicas"] != 1:
            fail(f"{name}: SQLite allows one replica")
    run_tool("kubernetes-validate",
             ["kubernetes-validate", "--strict", "--quiet",
              path("kubernetes", "sqlite-statefulset.yaml"), path("kubernetes", "postgres-deployment.yaml"),
              path("kubernetes", "sidecar-pod.yaml")],
             "kubernetes-validate --strict (schemas of the Kubernetes API)")

    # compose
    with open(path("compose.yaml"), encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    replicas = [n for n, s in compose["services"].items() if n != "postgres"]
    ports = set()
    for n in replicas:
        s = compose["services"][n]
        used_env |= set(s.get("environment", {}))
        grace = seconds(s.get("stop_grace_period", "10s"))
        if grace <= default_shutdown:
            fail(f"compose {n}: stop_grace_period {grace}s must be above the shutdown timeout {default_shutdown}s")
        if s.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
            fail(f"compose {n}: depends_on postgres service_healthy expected")
        for p in s.get("ports", []):
            if not p.startswith("127.0.0.1:"):
                fail(f"compose {n}: port {p} must be on the host's 127.0.0.1")
            ports.add(p)
    if len(replicas) != 2 or len(ports) != 2:
        fail(f"compose: two replicas on distinct ports expected, found {replicas} {sorted(ports)}")
    else:
        ok(f"compose: {replicas} on {sorted(ports)}, after postgres is healthy")
    run_tool("check-jsonschema",
             ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", path("compose.yaml")],
             "check-jsonschema compose-spec compose.yaml")

    # variables
    if help_text:
        known = set(defaults)
        unknown = sorted(used_env - known - PENDING_ENV)
        pending = sorted((used_env & PENDING_ENV) - known)
        if unknown:
            fail(f"variables not in `quiesce serve --help`: {unknown}")
        else:
            ok(f"{len(used_env)} QUIESCE_* variables, all known to the binary"
               + (f" (not in this build yet: {pending})" if pending else ""))

    print()
    if skipped:
        print("skipped: " + "; ".join(skipped))
    print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failure(s), {len(skipped)} check(s) skipped")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Carries out deploy/Dockerfile's instructions on this machine, without Docker.

    python3 deploy/run_dockerfile.py [--dockerfile PATH]

CI has Docker's client but no daemon, so it cannot `docker build`. This
script reads the Dockerfile (it holds no copy of its commands) and does
what a build and a `docker run` of the image would do, on this Debian
machine (the script refuses to run unless it is the Debian release the
image's base names, bookworm), as root:

  build stage:   its RUN commands as written (apt-get included, and the
                 release build: about 400 s of CPU from a cold target/),
                 with WORKDIR /src being the checkout, so `COPY . .`
                 copies nothing and the cache mount /src/target is the
                 checkout's target/ (the image sets no CARGO_TARGET_DIR,
                 so neither does this); `--mount=type=cache` options are
                 dropped (the host's cargo registry is the cache); the
                 binary is installed under a temporary root instead of
                 /usr/local/bin.
  runtime stage: its RUN commands (apt-get included; groupadd and useradd
                 are skipped when the group and user exist already with
                 the same ids, and fail loudly when a name or id is taken
                 by another), with /var/lib/quiesce and every other path
                 the image owns (COPY destinations, VOLUME, WORKDIR, ENV
                 values, mounts) under a temporary root; then COPY --from.
  context:       every file of the checkout the build read (the binary's
                 dep-info, and cargo metadata's manifests and targets) is
                 one that .dockerignore lets into the context.
  libraries:     every shared library the binary loads (ldd) comes from
                 a package of the runtime image, taken as the Essential and
                 Priority: required ones, what its RUN installs, and their
                 dependencies (this host has more than bookworm-slim).
  run:           first the image as is (`docker run IMAGE`, no tokens
                 file), which must be refused with exit 2 and a message
                 naming the tokens file (what deploy/README.md documents),
                 leaving the data dir as it was;
                 then the `docker run` line of the Dockerfile's header
                 comment (its -e variables, its named volume, its bind
                 mounts of the tokens file and the TLS certificate and key,
                 filled in with a tokens file and a certificate for
                 127.0.0.1 made here; requests trust only that one):
                 the ENTRYPOINT in exec form as the Dockerfile's USER
                 (setpriv), as PID 1 of a new PID namespace (unshare), with
                 only the image's ENV (plus Docker's PATH and HOME) in its
                 WORKDIR. One change: QUIESCE_LISTEN keeps the image's
                 0.0.0.0 but port 0 (the port is read back from
                 <data-dir>/listen.addr), so that it cannot clash with
                 anything else on the machine; requests go to 127.0.0.1.
  checks:        /readyz answers 200; a report POSTed without a token is
                 401, with the writer's token 202, then found and seen
                 processed by a GET with the reader's token; the data
                 dir is 0700 and every file in it 0600 (or less), all
                 owned by the USER's uid/gid; then the STOPSIGNAL, and the process must exit 0
                 within the `docker stop -t N` of the header comment.

What this does not prove: that the image builds with Docker (layers,
the base images' own packages and paths, BuildKit's cache mounts; the
build sees the whole checkout, so a file a build script reads that
.dockerignore leaves out goes unnoticed), that the slim image has what the
binary opens without linking it (dlopen, NSS, files), nor anything about
Docker's network or storage drivers. Left on the machine (CI's is thrown
away): the packages apt-get installs, the user and group of the image,
and the build in target/release (the cache mount's contents, as BuildKit
keeps them). Everything else is removed on every path, the process killed.

Exit status 0 when every step passed, 1 (with the reason) otherwise.
"""

import argparse
import filecmp
import grp
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import ssl
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
# What Docker gives a container besides the image's ENV.
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host settings that would change what the commands do, and that the
# image does not have.
HOST_ONLY_ENV = re.compile(r"^(CARGO_TARGET_DIR|CARGO_BUILD_TARGET_DIR|QUIESCE_.*|RUST_LOG)$")
START_TIMEOUT = 60.0
REFUSAL_TIMEOUT = 20.0


class Failure(Exception):
    pass


def die(msg):
    raise Failure(msg)


def step(msg):
    print(f"\n--> {msg}", flush=True)


def say(msg):
    print(f"    {msg}", flush=True)


# ---------------------------------------------------------------- parsing

def instructions(text):
    """[(line, INSTRUCTION, arguments)]: continuation lines joined, comments dropped."""
    out, cur, start = [], None, 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#") or (cur is not None and not s):
            continue  # comments, and blank lines inside a continuation, as Docker does
        if cur is None:
            if not s:
                continue
            cur, start = "", n
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1]
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        cur = None
    if cur is not None:
        die(f"Dockerfile line {start}: ends in a continuation")
    return out


def header_command(text, prefix):
    """The comment line(s) starting with `prefix` (e.g. 'docker run'), continuations joined."""
    lines = [l[1:].strip() for l in text.splitlines() if l.startswith("#")]
    for i, l in enumerate(lines):
        if l.startswith(prefix + " "):
            cmd = l
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + " " + lines[i]
            return cmd
    die(f"the Dockerfile's header comment has no `{prefix}` line")


def split_and(script):
    """A RUN's shell text split on its top-level `&&` (quotes respected).

    Running the parts one after the other, stopping at the first failure,
    is the same as running the chain; a top-level `||` is refused, as it
    would not be."""
    parts, cur, i, quote = [], "", 0, None
    while i < len(script):
        c = script[i]
        if quote:
            if c == "\\" and quote == '"':
                cur += script[i:i + 2]
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            cur += script[i:i + 2]
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif script.startswith("&&", i):
            parts.append(cur.strip())
            cur, i = "", i + 2
            continue
        elif script.startswith("||", i):
            die(f"RUN uses `||`, which this script does not carry out: {script!r}")
        cur += c
        i += 1
    if quote:
        die(f"RUN has an unterminated quote: {script!r}")
    parts.append(cur.strip())
    if any(not p for p in parts):
        die(f"RUN has an empty command in its && chain: {script!r}")
    return parts


def env_pairs(args, line):
    try:
        words = shlex.split(args)
    except ValueError as e:
        die(f"Dockerfile line {line}: ENV {e}")
    if not words or any("=" not in w for w in words):
        die(f"Dockerfile line {line}: only the ENV KEY=VALUE form is understood: {args!r}")
    return [tuple(w.split("=", 1)) for w in words]


def exec_form(args, line, what):
    try:
        argv = json.loads(args)
    except ValueError:
        argv = None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        die(f"Dockerfile line {line}: {what} must be in exec form (a JSON array), found {args!r}")
    return argv


# ---------------------------------------------------------------- paths

class Stage:
    def __init__(self, name, image, root):
        self.name, self.image, self.root = name, image, root
        self.workdir = "/"
        self.env = {}
        self.user = None
        self.entrypoint = None
        self.cmd = []
        self.stopsignal = signal.SIGTERM
        self.volumes = []
        self.exposed = []
        self.mapping = {}  # container path -> host path
        self.apt_installed = []  # what its RUNs `apt-get install`

    def own(self, path):
        """A path of the image: under this stage's temporary root (parents made, as the base has them)."""
        if not path.startswith("/"):
            die(f"stage {self.name}: not an absolute path: {path!r}")
        if path not in self.mapping and not any(path.startswith(p + "/") for p in self.mapping):
            host = os.path.join(self.root, path.lstrip("/"))
            os.makedirs(os.path.dirname(host), mode=0o755, exist_ok=True)
            self.mapping[path] = host

    def host(self, path):
        path = os.path.normpath(os.path.join(self.workdir, path))
        for c, h in sorted(self.mapping.items(), key=lambda kv: -len(kv[0])):
            if path == c or path.startswith(c + "/"):
                return h + path[len(c):]
        return path

    def map_text(self, text):
        for c, h in sorted(self.mapping.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(r"(?<![\w./-])" + re.escape(c) + r"(?=$|[/\s\"';:])", lambda _m, h=h: h, text)
        return text


def stage_name(args, line, index):
    """FROM's stage name (AS ...), or its index as Docker names it."""
    m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
    if not m or m.group(1).startswith("--"):
        die(f"Dockerfile line {line}: FROM {args!r} not understood")
    return m.group(2) or str(index)


def owned_paths(instrs, docker_run_mounts):
    """The absolute paths each stage's image owns (mapped under its temporary root)."""
    owned, stage = {}, None
    for line, word, args in instrs:
        if word == "FROM":
            stage = stage_name(args, line, len(owned))
            owned[stage] = set()
        elif word == "COPY":
            words = shlex.split(args)
            src_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
            paths = [w for w in words if not w.startswith("--")]
            if paths[-1].startswith("/"):
                owned[stage].add(paths[-1])
            if src_stage:
                owned.setdefault(src_stage, set()).update(p for p in paths[:-1] if p.startswith("/"))
        elif word in ("VOLUME",):
            owned[stage].update(exec_form(args, line, "VOLUME"))
        elif word == "ENV":
            owned[stage].update(v for _, v in env_pairs(args, line) if v.startswith("/"))
        elif word == "ENTRYPOINT":
            owned[stage].add(exec_form(args, line, "ENTRYPOINT")[0])
        elif word == "WORKDIR" and args.startswith("/"):
            owned[stage].add(args)
    owned[stage].update(docker_run_mounts)
    return owned


# ---------------------------------------------------------------- the steps

def check_release(image, line):
    with open("/etc/os-release", encoding="utf-8") as f:
        codename = re.search(r"^VERSION_CODENAME=(\S+)", f.read(), re.M)
    codename = codename.group(1) if codename else "?"
    if codename not in image:
        die(f"Dockerfile line {line}: the image {image!r} is not this machine's Debian release ({codename}): "
            "what this script runs would not be what the image runs")
    say(f"{image}: this machine is Debian {codename} too")


def run_env(stage):
    env = {k: v for k, v in os.environ.items() if not HOST_ONLY_ENV.match(k)}
    env.update({k: stage.map_text(v) for k, v in stage.env.items()})
    return env


def as_user(stage):
    """setpriv's options for the stage's USER (None: root)."""
    if stage.user is None:
        return []
    uid, _, gid = stage.user.partition(":")
    try:
        uid = int(uid) if uid.isdigit() else pwd.getpwnam(uid).pw_uid
        gid = int(gid) if gid.isdigit() else (grp.getgrnam(gid).gr_gid if gid else pwd.getpwuid(uid).pw_gid)
    except KeyError as e:
        die(f"USER {stage.user}: {e}")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def opt(words, *names):
    for i, w in enumerate(words):
        for n in names:
            if w == n and i + 1 < len(words):
                return words[i + 1]
            if w.startswith(n + "="):
                return w.split("=", 1)[1]
    return None


def account(words):
    """groupadd/useradd: None to run it, or why it is skipped (fails loudly on a clash)."""
    name = words[-1]
    if words[0] == "groupadd":
        gid = int(opt(words, "--gid", "-g"))
        try:
            found = grp.getgrnam(name).gr_gid
        except KeyError:
            found = None
        if found is None:
            try:
                die(f"groupadd: gid {gid} already belongs to group {grp.getgrgid(gid).gr_name!r}, not {name!r}")
            except KeyError:
                return None
        if found != gid:
            die(f"groupadd: group {name!r} exists with gid {found}, not {gid}")
        return f"group {name} (gid {gid}) exists"
    uid = int(opt(words, "--uid", "-u"))
    group = opt(words, "--gid", "-g")
    try:
        found = pwd.getpwnam(name)
    except KeyError:
        found = None
    if found is None:
        try:
            die(f"useradd: uid {uid} already belongs to user {pwd.getpwuid(uid).pw_name!r}, not {name!r}")
        except KeyError:
            return None
    want_gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    if (found.pw_uid, found.pw_gid) != (uid, want_gid):
        die(f"useradd: user {name!r} exists as {found.pw_uid}:{found.pw_gid}, not {uid}:{want_gid}")
    return f"user {name} ({uid}:{want_gid}) exists"


def run_instruction(stage, args, line):
    words = args.split()
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if not re.fullmatch(r"--mount=type=cache,target=\S+", flag):
            die(f"Dockerfile line {line}: RUN option {flag} is not understood by this script")
        target = flag.split("target=", 1)[1]
        where = stage.host(target)
        say(f"dropped {flag}: " + (f"{where} is that cache" if where != target
                                   else "the host's own directory is the cache"))
    # What remains after the options, with the original spacing and quoting.
    script = re.sub(r"^(--\S+\s+)*", "", args.strip())
    for part in split_and(script):
        words = shlex.split(part)
        if words[0] in ("groupadd", "useradd"):
            # Account names and a home dir (--no-create-home: a passwd field, nothing is
            # made there) go to the host's /etc/passwd and /etc/group unmapped.
            why = account(words)
            if why:
                say(f"skipped (already done): {part}  [{why}]")
                continue
            cmd = part
        else:
            cmd = stage.map_text(part)
            if words[0] == "apt-get" and "install" in words:
                stage.apt_installed += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
        say(f"$ {cmd}" + ("" if cmd == part else f"   [Dockerfile: {part}]"))
        rc = subprocess.run(as_user(stage) + ["/bin/sh", "-c", cmd], cwd=stage.host(stage.workdir),
                            env=run_env(stage), stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            die(f"Dockerfile line {line}: `{part}` exited {rc}")


def glob_regex(pattern):
    """A .dockerignore pattern (Go's filepath.Match, plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            j = pattern.index("]", i)
            out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore(dockerfile):
    """(which file, [(negated, regex)]): <Dockerfile>.dockerignore if present, else the context's."""
    for path in (dockerfile + ".dockerignore", os.path.join(CHECKOUT, ".dockerignore")):
        if os.path.exists(path):
            pats = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    p = line.strip()
                    if not p or p.startswith("#"):
                        continue
                    neg = p.startswith("!")
                    p = os.path.normpath(p[1:].strip() if neg else p).lstrip("/")
                    pats.append((neg, glob_regex(p)))
            return path, pats
    return None, []


def ignored(rel, pats):
    """Docker's rule: the last pattern matching the path, or a directory above it, decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    out = False
    for neg, rx in pats:
        if any(rx.match(c) for c in candidates):
            out = not neg
    return out


def check_context(stage, binary):
    """`COPY . .` sends the context minus .dockerignore: every file the build read must be in it.

    Here the build ran on the whole checkout, so an ignored source file would
    go unnoticed: the files are the binary's dep-info (what rustc read, from
    target/<profile>/<name>.d next to the binary that was installed) and, from
    `cargo metadata`, every workspace manifest, target source and Cargo.lock."""
    target = os.path.realpath(os.path.join(CHECKOUT, "target"))
    name = os.path.basename(binary)
    built = [os.path.join(target, d, name) for d in sorted(os.listdir(target))
             if os.path.isfile(os.path.join(target, d, name))]
    built = [b for b in built if filecmp.cmp(b, binary, shallow=False)]
    if not built or not os.path.exists(built[0] + ".d"):
        die(f"no target/<profile>/{name} (with its .d) identical to the binary the build stage installed")
    with open(built[0] + ".d", encoding="utf-8") as f:
        deps = f.read().split(":", 1)[1]
    files = [p.replace("\\ ", " ") for p in re.split(r"(?<!\\)\s+", deps.strip()) if p]
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=CHECKOUT,
                                     env=run_env(stage), capture_output=True, text=True, check=True).stdout)
    files.append(os.path.join(meta["workspace_root"], "Cargo.lock"))
    files.append(os.path.join(meta["workspace_root"], "Cargo.toml"))
    for pkg in meta["packages"]:
        files.append(pkg["manifest_path"])
        files += [t["src_path"] for t in pkg["targets"]]
    which, pats = dockerignore(opts_dockerfile[0])
    checkout = os.path.realpath(CHECKOUT)
    needed = set()
    for path in files:
        real = os.path.realpath(path)
        if real.startswith(target + "/") or not real.startswith(checkout + "/"):
            continue  # made by the build (OUT_DIR), or the registry's
        needed.add(os.path.relpath(real, checkout))
    lost = sorted(p for p in needed if ignored(p, pats))
    if lost:
        die(f"{which} leaves out of the context files the build reads: {', '.join(lost)}")
    say(f"{len(needed)} files of the checkout the build reads (dep-info of {os.path.relpath(built[0], target)}, "
        f"cargo metadata), none left out by {which or 'a .dockerignore (there is none)'}")


def copy_instruction(stage, stages, args, line):
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    src_stage = None
    for f in flags:
        if f.startswith("--from="):
            src_stage = stages.get(f.split("=", 1)[1]) or die(f"Dockerfile line {line}: no stage {f}")
        else:
            die(f"Dockerfile line {line}: COPY option {f} is not understood by this script")
    if len(paths) != 2:
        die(f"Dockerfile line {line}: COPY of one source only is understood: {args!r}")
    src, dest = paths
    if src_stage is None:
        if src == "." and stage.host(dest) == CHECKOUT:
            say(f"COPY {args}: nothing to copy (the workdir {stage.workdir} is the checkout)")
            return
        die(f"Dockerfile line {line}: COPY from the context is understood only as `COPY . .` "
            f"into the workdir mapped to the checkout: {args!r}")
    s, d = src_stage.host(src), stage.host(dest)
    if not os.path.isfile(s):
        die(f"Dockerfile line {line}: COPY --from={src_stage.name}: {src} ({s}) does not exist")
    shutil.copy2(s, d)
    os.chown(d, 0, 0)
    say(f"COPY {args}: {s} -> {d}")
    if src_stage is stages_in_order(stages)[0]:
        check_context(src_stage, s)


def stages_in_order(stages):
    return list(stages.values())


def build(text):
    instrs = instructions(text)
    run_line = header_command(text, "docker run")
    stages, order, stage = {}, [], None
    mounts = [v.split(":")[1] for v in docker_run(run_line)["volumes"]]
    owned = owned_paths(instrs, mounts)
    tmp = tempfile.mkdtemp(prefix="quiesce-dockerfile-")
    os.chmod(tmp, 0o755)  # the image's user must reach its files under it
    cleanup_dirs.append(tmp)
    for line, word, args in instrs:
        if word == "FROM":
            name, image = stage_name(args, line, len(order)), args.split()[0]
            step(f"stage {name} (FROM {image}), Dockerfile line {line}")
            check_release(image, line)
            stage = Stage(name, image, os.path.join(tmp, name))
            os.makedirs(stage.root, mode=0o755)
            stages[name] = stage
            order.append(stage)
            for p in sorted(owned.get(name, ())):
                stage.own(p)
            continue
        if stage is None:
            die(f"Dockerfile line {line}: {word} before FROM")
        if word == "RUN":
            run_instruction(stage, args, line)
        elif word == "WORKDIR":
            new = os.path.normpath(os.path.join(stage.workdir, args))
            stage.workdir = new
            if stage is order[0]:
                # The build stage's workdir, where `COPY . .` puts the context: the checkout.
                if any(c != new for c, h in stage.mapping.items() if h == CHECKOUT):
                    die(f"Dockerfile line {line}: a second WORKDIR in the build stage is not understood")
                stage.mapping[new] = CHECKOUT
            else:
                os.makedirs(stage.host(new), mode=0o755, exist_ok=True)
            say(f"WORKDIR {new} -> {stage.host(new)}")
        elif word == "COPY":
            copy_instruction(stage, stages, args, line)
        elif word == "ENV":
            stage.env.update(env_pairs(args, line))
            say(f"ENV {' '.join(f'{k}={v}' for k, v in env_pairs(args, line))}")
        elif word == "USER":
            stage.user = args
            say(f"USER {args}")
        elif word == "VOLUME":
            stage.volumes = exec_form(args, line, "VOLUME")
        elif word == "EXPOSE":
            stage.exposed = [int(p.split("/")[0]) for p in args.split()]
        elif word == "STOPSIGNAL":
            try:
                stage.stopsignal = signal.Signals[args] if not args.isdigit() else signal.Signals(int(args))
            except (KeyError, ValueError):
                die(f"Dockerfile line {line}: STOPSIGNAL {args!r} is not a signal")
        elif word == "ENTRYPOINT":
            stage.entrypoint = exec_form(args, line, "ENTRYPOINT")
        elif word == "CMD":
            stage.cmd = exec_form(args, line, "CMD")
        elif word == "LABEL":
            pass  # metadata only
        else:
            die(f"Dockerfile line {line}: {word} is not understood by this script (teach it, or it proves nothing)")
    if len(order) < 2:
        die("expected a build stage and a runtime stage")
    return order[-1], run_line, text


def docker_run(line):
    words = shlex.split(line)[2:]
    out = {"env": {}, "volumes": [], "ports": [], "args": []}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-d", "--detach", "--rm"):
            i += 1
        elif w in ("--name", "-e", "--env", "-v", "--volume", "-p", "--publish"):
            v = words[i + 1]
            if w in ("-e", "--env"):
                k, _, val = v.partition("=")
                out["env"][k] = val
            elif w in ("-v", "--volume"):
                out["volumes"].append(v)
            elif w in ("-p", "--publish"):
                out["ports"].append(v)
            i += 2
        elif w.startswith("-"):
            die(f"`{line}`: option {w} is not understood by this script")
        else:
            out["image"], out["args"] = w, words[i + 1:]
            break
    if "image" not in out:
        die(f"`{line}`: no image")
    return out


def dpkg_names(field):
    """Package names in a Depends-like field (versions, architectures and alternatives flattened)."""
    return [alt.split()[0].split(":")[0] for clause in field.split(",") if clause.strip()
            for alt in clause.split("|")]


def check_libraries(stage, binary):
    """Every shared library the binary loads comes from a package the runtime image has.

    The host has more packages than debian:bookworm-slim; what the slim image
    has is approximated by the Essential and Priority: required packages, what
    the stage's RUN `apt-get install`s, and what those depend on."""
    out = subprocess.run(["dpkg-query", "-W", "-f",
                          "${Package}\t${Essential}\t${Priority}\t${Provides}\t${Pre-Depends}\t${Depends}\n"],
                         capture_output=True, text=True, check=True).stdout
    deps, provides, base = {}, {}, []
    for row in out.splitlines():
        pkg, essential, priority, prov, pre, dep = row.split("\t")
        deps[pkg] = dpkg_names(pre) + dpkg_names(dep)
        for p in dpkg_names(prov):
            provides.setdefault(p, []).append(pkg)
        if essential == "yes" or priority == "required":
            base.append(pkg)
    have, todo = set(), base + stage.apt_installed
    while todo:
        name = todo.pop()
        for pkg in ([name] if name in deps else provides.get(name, [])):
            if pkg not in have:
                have.add(pkg)
                todo += deps[pkg]
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if ldd.returncode != 0 or "not found" in ldd.stdout:
        die(f"ldd {binary}:\n{ldd.stdout}{ldd.stderr}")
    owners = {}
    for lib in re.findall(r"(/\S+) \(0x", ldd.stdout):
        for candidate in (lib, lib[4:] if lib.startswith("/usr/") else "/usr" + lib):
            found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                owners[lib] = found.stdout.split(":")[0]
                break
        else:
            die(f"{lib}, which the binary loads, belongs to no package")
    missing = {lib: pkg for lib, pkg in owners.items() if pkg not in have}
    if missing:
        die("the binary loads libraries from packages the runtime stage does not install: "
            + ", ".join(f"{lib} ({pkg})" for lib, pkg in sorted(missing.items())))
    say(f"{len(owners)} shared libraries, from {len(set(owners.values()))} packages of the runtime stage "
        f"(required ones, {' '.join(stage.apt_installed)} and their dependencies)")


# ---------------------------------------------------------------- the run

cleanup_dirs = []
opts_dockerfile = []  # the Dockerfile's path (for <Dockerfile>.dockerignore)
cleanup_procs = []
cleanup_pids = []  # the entrypoints' host pids (unshare's children)


# No proxy, whatever the environment says: every request goes to 127.0.0.1.
# Over TLS, the certificate made here is the only one trusted (set in
# `run_image`).
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def trust(cert_file):
    """From now on, requests are made over TLS trusting only `cert_file`."""
    global OPENER
    context = ssl.create_default_context(cafile=cert_file)
    OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))


def http(method, url, token=None, body=None):
    req = urllib.request.Request(url, method=method, data=body)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def container_env(stage, extra):
    # Docker's HOME: the USER's home in the image's /etc/passwd (made by its useradd), else /.
    try:
        home = pwd.getpwuid(user_ids(stage)[0]).pw_dir
    except KeyError:
        home = "/"
    env = {"PATH": DOCKER_PATH, "HOME": home}
    env.update(stage.env)
    env.update(extra)
    return {k: stage.map_text(v) if v.startswith("/") else v for k, v in env.items()}


def user_ids(stage):
    opts = as_user(stage)
    if not opts:
        die("the image has no USER: it would run as root")
    uid, gid = int(opts[1].split("=")[1]), int(opts[2].split("=")[1])
    if uid == 0:
        die(f"USER {stage.user} is root")
    return uid, gid


def start(stage, env, args, log):
    """The entrypoint as PID 1 of a new PID namespace, as the USER: (unshare's Popen, the process's host pid)."""
    argv = [stage.host(stage.entrypoint[0])] + stage.entrypoint[1:] + args
    cmd = ["unshare", "--pid", "--fork", "--kill-child"] + as_user(stage) + argv
    say("$ " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, cwd=stage.host(stage.workdir), env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cleanup_procs.append(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                kids = f.read().split()
            if kids and os.path.realpath(f"/proc/{kids[0]}/exe") == os.path.realpath(argv[0]):
                with open(f"/proc/{kids[0]}/status") as f:
                    nspid = re.search(r"^NSpid:\s+(.*)$", f.read(), re.M).group(1).split()
                cleanup_pids.append(int(kids[0]))
                if nspid[-1] != "1":
                    die(f"the entrypoint is pid {nspid[-1]} in its namespace, not 1")
                return proc, int(kids[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
        if proc.poll() is not None:
            return proc, None
        time.sleep(0.02)
    die("the entrypoint did not start within 10 s")


def tail(path, n=40):
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-n:])


def run_image(stage, run_line, text, tmp):
    spec = docker_run(run_line)
    stop_line = header_command(text, "docker stop")
    m = re.search(r"(?:-t|--time)[ =](\d+)", stop_line)
    if not m:
        die(f"`{stop_line}`: no -t: the stop budget must be given")
    stop_budget = int(m.group(1))
    uid, gid = user_ids(stage)
    if stage.entrypoint is None:
        die("the image has no ENTRYPOINT")
    data_dir = stage.env.get("QUIESCE_DATA_DIR") or die("the image sets no QUIESCE_DATA_DIR")
    listen = stage.env.get("QUIESCE_LISTEN") or die("the image sets no QUIESCE_LISTEN")
    host_data = stage.host(data_dir)
    port = int(listen.rsplit(":", 1)[1])
    if data_dir not in stage.volumes:
        die(f"the data dir {data_dir} is not a VOLUME of the image ({stage.volumes})")
    if port not in stage.exposed:
        die(f"QUIESCE_LISTEN {listen}: port {port} is not EXPOSEd ({stage.exposed})")
    for p in spec["ports"]:
        if int(p.rsplit(":", 1)[1]) != port:
            die(f"`docker run -p {p}` publishes a port the image does not listen on ({listen})")

    step("the binary's shared libraries")
    check_libraries(stage, stage.host(stage.entrypoint[0]))

    step("`docker run IMAGE` as is (no tokens, no TLS): refused with exit 2, naming both, nothing created")
    before = sorted(os.listdir(host_data))
    log = os.path.join(tmp, "refused.log")
    with open(log, "w") as f:
        proc, _ = start(stage, container_env(stage, {}), stage.cmd, f)
    try:
        rc = proc.wait(REFUSAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        die(f"`docker run IMAGE` without a tokens file is still running after {REFUSAL_TIMEOUT:.0f} s "
            "(deploy/README.md says it is refused with exit 2):\n" + tail(log))
    out = tail(log)
    if rc != 2 or "tokens-file" not in out or "tls-cert" not in out:
        die(f"`docker run IMAGE` without a tokens file exited {rc} "
            f"(expected 2, naming --tokens-file and --tls-cert):\n{out}")
    if sorted(os.listdir(host_data)) != before:
        die(f"the refused start left files in the data dir: {sorted(os.listdir(host_data))}")
    say(f"exit 2: {out.strip().splitlines()[-1]}")

    step(f"the header's `docker run` line: {run_line}")
    extra = dict(spec["env"])
    tokens_dst = extra.get("QUIESCE_TOKENS_FILE") or die("the `docker run` line sets no QUIESCE_TOKENS_FILE")
    cert_dst = extra.get("QUIESCE_TLS_CERT") or die("the `docker run` line sets no QUIESCE_TLS_CERT")
    key_dst = extra.get("QUIESCE_TLS_KEY") or die("the `docker run` line sets no QUIESCE_TLS_KEY")
    # A certificate for 127.0.0.1, made here with openssl as the README
    # shows (the key the image's user's and private, like the tokens).
    made = os.path.join(tmp, "tls")
    os.makedirs(made)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", os.path.join(made, "tls.key"), "-out", os.path.join(made, "tls.crt")],
                   check=True, capture_output=True)
    trust(os.path.join(made, "tls.crt"))
    writer, reader = secrets.token_hex(32), secrets.token_hex(32)
    for v in spec["volumes"]:
        src, dst = v.split(":")[:2]
        if "/" not in src:
            if dst not in stage.volumes:
                die(f"-v {v}: {dst} is not a VOLUME of the image")
            # A new named volume starts as a copy of the image's directory (owner, mode).
            say(f"-v {v}: the image's {dst} ({stage.host(dst)})")
        elif dst == tokens_dst:
            host = stage.host(dst)
            with open(host, "w", encoding="utf-8") as f:
                f.write(f"site12:{writer}:write\nreader:{reader}:read\n")
            # As deploy/README.md says: the image's user's, and private.
            os.chown(host, uid, gid)
            os.chmod(host, 0o600)
            say(f"-v {v}: a tokens file made here, {uid}:{gid} 0600 ({host})")
        elif dst in (cert_dst, key_dst):
            host = stage.host(dst)
            os.makedirs(os.path.dirname(host), exist_ok=True)
            shutil.copyfile(os.path.join(made, "tls.key" if dst == key_dst else "tls.crt"), host)
            os.chown(host, uid, gid)
            os.chmod(host, 0o600 if dst == key_dst else 0o644)
            say(f"-v {v}: a {'key' if dst == key_dst else 'certificate'} made here ({host})")
        else:
            die(f"-v {v}: a bind mount this script does not know how to fill")
    extra["QUIESCE_LISTEN"] = listen.rsplit(":", 1)[0] + ":0"
    say(f"QUIESCE_LISTEN={extra['QUIESCE_LISTEN']} instead of {listen}: a free port, read from listen.addr")
    env = container_env(stage, extra)
    log = os.path.join(tmp, "serve.log")
    with open(log, "w") as f:
        proc, pid = start(stage, env, spec["args"] or stage.cmd, f)
    if pid is None:
        die(f"the process exited {proc.wait()} at once:\n" + tail(log))
    st = os.stat(f"/proc/{pid}")
    say(f"pid {pid} (1 in its namespace), running as {st.st_uid}:{st.st_gid}")
    if (st.st_uid, st.st_gid) != (uid, gid):
        die(f"the process runs as {st.st_uid}:{st.st_gid}, not the USER {uid}:{gid}")

    addr_file = os.path.join(host_data, "listen.addr")
    deadline = time.monotonic() + START_TIMEOUT
    base = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die(f"the process exited {proc.returncode} before it was ready:\n" + tail(log))
        if base is None and os.path.exists(addr_file):
            with open(addr_file, encoding="utf-8") as f:
                bound = f.read().strip()
            if bound:
                base = f"https://127.0.0.1:{int(bound.rsplit(':', 1)[1])}"
                say(f"listen.addr: {bound}")
        if base:
            try:
                if http("GET", base + "/readyz")[0] == 200:
                    break
            except OSError:
                pass
        time.sleep(0.1)
    else:
        die(f"not ready within {START_TIMEOUT:.0f} s:\n" + tail(log))
    say("GET /readyz: 200")

    report = {"report_id": "dockerfile-steps-0001", "patient_id": "P-0001", "site_id": "site-1",
              "instrument": "PHQ-9", "submitted_at": "2026-11-23T09:30:00Z",
              "answers": {f"q{i}": 1 if i < 9 else 0 for i in range(1, 10)}}
    body = json.dumps(report).encode()
    code, _ = http("POST", base + "/v1/reports", body=body)
    if code != 401:
        die(f"POST /v1/reports without a token: {code}, expected 401 (is the tokens file in use?)")
    say("POST /v1/reports without a token: 401")
    code, answer = http("POST", base + "/v1/reports", token=writer, body=body)
    if code != 202 or json.loads(answer).get("status") != "accepted":
        die(f"POST /v1/reports with the writer's token: {code} {answer}")
    say(f"POST /v1/reports with the writer's token: 202 {answer}")
    code, answer = http("GET", base + f"/v1/reports/{report['report_id']}", token=reader)
    if code != 200 or json.loads(answer).get("report_id") != report["report_id"]:
        die(f"GET /v1/reports/{report['report_id']} with the reader's token: {code} {answer}")
    say(f"GET /v1/reports/{report['report_id']}: 200, status {json.loads(answer).get('status')}")
    deadline = time.monotonic() + START_TIMEOUT
    while json.loads(answer).get("status") != "processed":
        if time.monotonic() > deadline or proc.poll() is not None:
            die(f"report not processed within {START_TIMEOUT:.0f} s: {answer}\n" + tail(log))
        time.sleep(0.1)
        code, answer = http("GET", base + f"/v1/reports/{report['report_id']}", token=reader)
    score = (json.loads(answer).get("result") or {}).get("score") or {}
    say(f"processed: score {score.get('total')}, band {score.get('band')}")

    db = os.path.join(host_data, "quiesce.db")
    if not os.path.isfile(db):
        die(f"no database at {data_dir}/quiesce.db: {sorted(os.listdir(host_data))}")
    entries = [host_data]
    for dirpath, dirs, files in os.walk(host_data):
        entries += [os.path.join(dirpath, n) for n in dirs + files]
    for p in entries:
        s = os.lstat(p)
        mode = stat.S_IMODE(s.st_mode)
        want = 0o700 if stat.S_ISDIR(s.st_mode) else 0o600
        rel = os.path.join(data_dir, os.path.relpath(p, host_data)).rstrip("/.")
        if (s.st_uid, s.st_gid) != (uid, gid) or mode & ~want or (p == host_data and mode != 0o700) \
                or (p == db and mode != 0o600):
            die(f"{rel}: {s.st_uid}:{s.st_gid} {mode:04o}, expected {uid}:{gid} {want:04o}")
    say(f"{data_dir} 0700 and quiesce.db 0600, every file in it private, all {uid}:{gid}: "
        f"{sorted(os.listdir(host_data))}")

    step(f"STOPSIGNAL {stage.stopsignal.name} to pid 1, then at most {stop_budget} s (`{stop_line}`)")
    os.kill(pid, stage.stopsignal)
    sent = time.monotonic()
    try:
        rc = proc.wait(stop_budget)
    except subprocess.TimeoutExpired:
        die(f"still running {stop_budget} s after {stage.stopsignal.name}: `docker stop` would SIGKILL it:\n"
            + tail(log))
    took = time.monotonic() - sent
    if rc != 0:
        # (unshare's status is the process's; -N when a signal N killed it, 1 for SIGKILL.)
        die(f"exited {rc} after {stage.stopsignal.name}, expected 0:\n" + tail(log))
    if os.path.exists(addr_file):
        die("listen.addr is still there after the stop")
    say(f"exit 0 after {took:.1f} s; listen.addr removed, quiesce.db kept")


def cleanup():
    for proc in cleanup_procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # unshare's --kill-child takes the entrypoint with it
            except ProcessLookupError:
                pass
            proc.wait()
    for pid in cleanup_pids:
        # The namespace's init got SIGKILL with its process group and from unshare
        # (--kill-child): wait until it is gone (or a zombie: its files and port released).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            print(f"run_dockerfile.py: pid {pid} still running after SIGKILL", file=sys.stderr)
    for d in cleanup_dirs:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dockerfile", default=os.path.join(HERE, "Dockerfile"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary root (printed) for a look")
    opts = ap.parse_args()
    opts_dockerfile.append(os.path.abspath(opts.dockerfile))
    if os.geteuid() != 0:
        print("run_dockerfile.py: must run as root (apt-get, useradd, setpriv), as CI does", file=sys.stderr)
        return 1
    def stopped(signum, _frame):
        raise Failure(f"stopped by {signal.Signals(signum).name} (cleaning up)")
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    started = time.monotonic()
    try:
        with open(opts.dockerfile, encoding="utf-8") as f:
            text = f.read()
        print(f"carrying out {opts.dockerfile} on this machine (no Docker daemon here)")
        stage, run_line, text = build(text)
        run_image(stage, run_line, text, cleanup_dirs[0])
    except Failure as e:
        print(f"\nFAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if opts.keep and cleanup_dirs:
            print(f"kept {cleanup_dirs[0]}")
            cleanup_dirs.clear()
        cleanup()
    print(f"\npassed: the Dockerfile's steps, in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

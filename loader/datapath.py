"""Attach, detach, swap, set, status and stats: the datapath on interfaces.

An attached datapath lives in bpffs under /sys/fs/bpf/xdpnn/<iface>[@<netns>]:
the program, its maps and nn_meta, a map holding the attach record (JSON)
that later commands read.  Every pin and attach is undone if a later step
fails, so a failed `attach` leaves the system as it was.

Commands that change a datapath (attach, detach, swap, set) hold its
writer lock (writer_lock) from their first read to their last write, and
validate everything before their first write: a failed command changes
nothing, and two commands never interleave their read-modify-writes.
"""
from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import json
import os
import subprocess
import time
from contextlib import ExitStack, contextmanager

from xdpnn.loader import bpf_sys, compile, maps, progarray
from xdpnn.loader.errors import (AttachError, MissingFeatureError, ModelFileError, StateError,
                                 UsageError, XdpnnError)
from xdpnn.loader.netns import check_ifname, check_netns_name, ifindex, netns
from xdpnn.trainer import model as model_file

BPFFS = "/sys/fs/bpf"
# The BPF links that own the XDP attachments, on the interface and its peer.
LINK_PINS = ("link", "peer_link")
PIN_ROOT = f"{BPFFS}/xdpnn"
LOCK_DIR = "/run/xdpnn"


def pin_dir(iface: str, ns: str | None) -> str:
    """The pin folder of iface in ns: always one level below PIN_ROOT, because
    both names are checked to be names, never paths."""
    check_ifname(iface)
    return f"{PIN_ROOT}/{iface}@{check_netns_name(ns)}" if ns else f"{PIN_ROOT}/{iface}"


@contextmanager
def writer_lock(iface: str, ns: str | None):
    """Holds the writer lock of iface in ns: an flock on LOCK_DIR/<pin folder
    name>.lock.  A file outside bpffs, so attach can take it before the pin
    folder exists, and detach while removing it; the kernel drops the lock
    when its holder exits, however it exits.  The holder removes the file
    before it lets go; a waiter that got the lock on a file no longer there
    retries on the new one, so two commands never hold two different files."""
    name = os.path.basename(pin_dir(iface, ns))  # validated: never a path
    path = f"{LOCK_DIR}/{name}.lock"
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the command that holds it
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def ensure_bpffs() -> None:
    """Mounts bpffs at /sys/fs/bpf if nothing is mounted there (as bpftool does)."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[:3] for line in f]
    if any(m[1:3] == [BPFFS, "bpf"] for m in mounts):
        return
    # `ip netns exec` runs commands in a private mount namespace with its own
    # sysfs (mounted with the namespace's name as source): pins made there
    # would vanish with it and leave the program orphaned.
    if any(m[1:3] == ["/sys", "sysfs"] and m[0] != "sysfs" for m in mounts):
        raise UsageError(f"no bpffs at {BPFFS} in this private mount namespace (under "
                         "`ip netns exec`?): run `xdpnn -n NETNS ...` instead")
    r = subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], capture_output=True, text=True)
    if r.returncode != 0:
        raise MissingFeatureError(f"mount bpffs at {BPFFS}: {r.stderr.strip()} "
                                  "(inside `ip netns exec`? use `xdpnn -n NETNS` instead)")


def parse_actions(specs: list[str], classes: list[str], current: list[str] | None = None
                  ) -> list[str]:
    """CLASS=ACTION strings applied over the current actions (default: all count):
    one action per class, count, pass, drop or redirect:IFACE."""
    acts = list(current or ["count"] * len(classes))
    for spec in specs:
        name, sep, action = spec.partition("=")
        kind, _, target = action.partition(":")
        if action == "redirect":
            raise UsageError(f"action '{spec}': redirect needs a target interface: "
                             f"{name}=redirect:IFACE sends the class out of IFACE")
        if not sep or kind not in maps.ACTIONS or bool(target) != (kind == "redirect"):
            raise UsageError(f"action '{spec}': expected CLASS=ACTION with ACTION one of "
                             "count, pass, drop, redirect:IFACE")
        for k in range(len(classes)) if name == "all" else [_class_index(name, classes)]:
            acts[k] = action
    return acts


def redirect_targets(classes: list[str], acts: list[str], before: list[str], iface: str,
                     peer: str | None, ns: str | None) -> dict[int, int]:
    """Class -> target ifindex, for each class whose action became redirect:IFACE;
    validated.  Call inside ns: the devmap resolves ifindexes there."""
    out = {}
    for k, (action, old) in enumerate(zip(acts, before)):
        kind, _, target = action.partition(":")
        if kind != "redirect" or action == old:
            continue
        if target in (iface, peer):
            raise UsageError(f"action '{classes[k]}={action}': {target} is where packets arrive; "
                             "redirect to another interface (a monitor or scrubbing port)")
        try:
            out[k] = ifindex(target, ns)
        except AttachError as e:
            raise AttachError(f"action '{classes[k]}={action}': {e}") from None
    return out


def write_redirects(tx_fd: int, targets: dict[int, int]) -> None:
    """Class k redirects through devmap slot TX_TARGETS + k (nn_config.tx_slot)."""
    for k, i in targets.items():
        bpf_sys.map_update(tx_fd, maps.TX_TARGETS + k, ctypes.c_uint32(i), "nn_tx_port")


def config_actions(cfg: maps.Config, acts: list[str]) -> None:
    for k, action in enumerate(acts):
        cfg.action[k] = maps.ACTIONS.index(action.partition(":")[0])
        cfg.tx_slot[k] = maps.TX_TARGETS + k


def _class_index(name: str, classes: list[str]) -> int:
    if name in classes:
        return classes.index(name)
    if name.isascii() and name.isdigit() and int(name) < len(classes):
        return int(name)
    raise UsageError(f"action class '{name}': the model's classes are {', '.join(classes)} "
                     f"(or 0..{len(classes) - 1}, or 'all')")


def model_summary(model: model_file.Model, path: str) -> dict:
    """For the attach record: what names the model, not its provenance (a
    training report can be larger than nn_meta; `model show` prints it).
    The hash is that of the bytes the model was parsed from: reading the
    path again might find another file."""
    return {"path": os.path.abspath(path), "sha256": model.sha256, "shape": model.shape,
            "classes": model.classes, "input": model.input}


def attach(iface: str, model_path: str, peer: str | None = None, input_mode: str | None = None,
           port: int | None = None, actions: list[str] = (), xdp_mode: str = "native",
           ns: str | None = None, serve: bool = False, plan_path: str | None = None,
           cpus: list[int] | None = None, stage: int | None = None) -> dict:
    """Validates, compiles, fills maps, pins and attaches; all or nothing.
    serve: answer requests to the port with XDP_TX (docs/serving.md).
    A model over one program's verifier budget runs as tail-call stages,
    cut by the planner or as plan_path says (docs/partitioning.md); cpus:
    stages 1.. run on these CPUs instead, chained by CPUMAP; stage: only
    this stage of the plan, one hop of a chain across interfaces."""
    from xdpnn.loader import plan
    model = load_model(model_path)
    if input_mode and input_mode != model.mode:
        # The input's value bits stay: they are how the weights read it.
        model.input = {"mode": input_mode, **{k: model.input[k] for k in ("bits", "signed")
                                              if k in model.input}}
        if input_mode == "payload":
            model.input["port"] = model_file.DEFAULT_PORT
        _validate(model, model_path)
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"--port {port}: expected 1..65535")
    if port is not None and model.mode != "payload":
        raise UsageError(f"--port {port}: {model.mode} mode has no request port (it "
                         "classifies every IPv4 packet)")
    if serve and model.mode != "payload":
        raise UsageError("--serve: serving reads inputs from requests, so it needs payload "
                         "input (--input payload)")
    if serve:
        binary_inputs_only(model, model_path, "attach --serve")
    port = port or model.input.get("port") or model_file.DEFAULT_PORT
    if peer == iface:
        raise UsageError(f"--peer {peer}: the peer must be another interface")
    acts = parse_actions(list(actions), model.classes)
    cuts = plan.load(plan_path, model) if plan_path else plan.auto_cuts(model)
    if cuts and len(cuts) > 1 and model.mode == "flow":
        raise UsageError(f"model {model.shape} runs as {len(cuts)} stages, and stages run "
                         "payload and headers models, not flow mode (docs/partitioning.md)")
    from xdpnn.loader import stages
    if stage is not None:
        check_hop(stage, cuts, plan_path, peer, cpus, acts, serve)
        stages.check_room(model, cuts, hop=True)
    if cpus is not None:
        if not cuts or len(cuts) < 2:
            raise UsageError(f"--cpus: model {model.shape} runs as one program; give a "
                             "--plan of 2 or more stages to spread it over CPUs")
        if serve:
            raise UsageError("--cpus with --serve: the last stage replies with XDP_TX, which "
                             "a CPUMAP program cannot; drop --cpus to serve the stages "
                             "chained by tail calls (docs/partitioning.md)")
        if xdp_mode != "native":
            raise UsageError("--cpus: CPUMAP chaining needs --xdp-mode native")
        cpus = stages.check_cpus(cpus, len(cuts))
        stages.check_room(model, cuts, hop=False)
    ensure_bpffs()
    with writer_lock(iface, ns):
        return _attach(iface, model, model_path, peer, port, acts, xdp_mode, ns, serve,
                       cuts if cuts and len(cuts) > 1 else None, cpus, stage)


def check_hop(stage: int, cuts, plan_path, peer, cpus, acts, serve=False) -> None:
    """--stage S: one stage of a plan of 2 or more, alone on this interface;
    a stage that hands on sends out of --peer, and only the last takes
    the classes' actions (a reply from the last hop would go back towards
    the hop before, not the client: hops do not serve)."""
    if not plan_path:
        raise UsageError(f"--stage {stage}: give the --plan it is a stage of")
    if serve:
        raise UsageError(f"--stage {stage} --serve: hops do not serve; served models run "
                         "their stages by tail calls on one interface (attach --serve "
                         "without --stage)")
    if cpus is not None:
        raise UsageError(f"--stage {stage} --cpus: a hop runs one stage; --cpus spreads all "
                         "of them over CPUs of one interface (choose one)")
    if len(cuts) < 2:
        raise UsageError(f"--stage {stage}: plan {plan_path} has one stage; attach without "
                         "--stage")
    if stage >= len(cuts):
        raise UsageError(f"--stage {stage}: plan {plan_path} has {len(cuts)} stages "
                         f"(0..{len(cuts) - 1})")
    if stage < len(cuts) - 1:
        if not peer:
            raise UsageError(f"--stage {stage}: it hands its frames on to stage {stage + 1} "
                             "out of --peer: give the interface towards the next hop")
        if any(a != "count" for a in acts):
            raise UsageError(f"--action: stage {stage} is not the last (stage "
                             f"{len(cuts) - 1} gives the class and takes the actions)")


def stage_pins(s: int, last: bool, nxt: str = "nn_next") -> tuple[str, ...]:
    """The pins of stage s >= 1 beside stage 0's (bpffs refuses dots)."""
    return tuple(f"stage{s}_{n}" for n in ("prog", "nn_model") + (() if last else (nxt,)))


def _attach(iface, model, model_path, peer, port, acts, xdp_mode, ns, serve, cuts,
            cpus=None, stage=None) -> dict:
    pdir = pin_dir(iface, ns)
    if os.path.exists(pdir):
        raise StateError(f"{iface}: xdpnn is already attached ({pdir}); "
                         f"run `xdpnn detach {iface}` or `xdpnn swap`")
    ifaces = [iface] + ([peer] if peer else [])
    with netns(ns):
        idx = [ifindex(name, ns) for name in ifaces]
        if peer and link_of(iface) == peer:
            raise UsageError(f"--peer {peer}: {iface} and {peer} are the two ends of one veth "
                             "pair; forwarding between them would loop packets forever")
        for name, i in zip(ifaces, idx):
            if bpf_sys.xdp_prog_id(i):
                raise AttachError(f"{name}: another XDP program is already attached "
                                  f"(id {bpf_sys.xdp_prog_id(i)}); detach it first")
        targets = redirect_targets(model.classes, acts, ["count"] * len(acts), iface, peer, ns)
    record = {"iface": iface, "peer": peer, "netns": ns, "xdp_mode": xdp_mode,
              "input": model.mode, "port": port if model.mode == "payload" else None,
              "serve": serve, "model": model_summary(model, model_path),
              "actions": dict(zip(model.classes, acts)), "prog_id": 2**32 - 1,
              "attached_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cuts:
        record["stages"] = [c.as_list() for c in cuts]
    if cpus:
        record["cpus"] = cpus
    if stage is not None:
        record["stage"] = stage  # a hop: this stage alone
    encode_record(record)  # before compiling: the widest prog_id, so it fits later too

    with ExitStack() as undo:
        if stage is not None:  # a hop: one program with maps of its own
            from xdpnn.loader import stages
            prog = stages.build_hop(model, cuts, stage)
        elif cuts:  # later stages open stage 0's maps through pins while they load
            from xdpnn.loader import stages
            os.makedirs(pdir)
            undo.callback(remove_pins, pdir)
            prog = stages.build(model, cuts, pdir, cpus=cpus, serve=serve)
        else:
            prog = compile.build(model, defines=("NN_SERVE",) if serve else ())
        undo.callback(prog.close)
        cfg = maps.Config(udp_port=port)
        cfg.ifindex[0] = idx[0]
        cfg.ifindex[1] = idx[1] if peer else 0
        config_actions(cfg, acts)
        compile.write_config(prog.maps["nn_config"], cfg)
        record["prog_id"] = bpf_sys.prog_info(prog.prog_fd).id
        write_record(prog.maps["nn_meta"], encode_record(record))
        with netns(ns):
            # DEVMAP entries resolve ifindexes in the caller's namespace.
            for slot, i in enumerate(idx):
                bpf_sys.map_update(prog.maps["nn_tx_port"], slot, ctypes.c_uint32(i), "nn_tx_port")
            write_redirects(prog.maps["nn_tx_port"], targets)

        if not cuts or stage is not None:
            os.makedirs(pdir)
            undo.callback(remove_pins, pdir)
        if stage is not None:
            for name in ("nn_stage", "nn_stage_err"):
                bpf_sys.pin(prog.maps[name], f"{pdir}/{name}")
        bpf_sys.pin(prog.prog_fd, f"{pdir}/prog")
        for name in maps.MAP_NAMES + maps.FLOW_MAP_NAMES:
            # Stages pinned the shared ones; the flow table is flow mode's only.
            if name in prog.maps and not os.path.exists(f"{pdir}/{name}"):
                bpf_sys.pin(prog.maps[name], f"{pdir}/{name}")
        if cuts and stage is None:  # a program array keeps its slots only while a pin holds it
            nxt = "nn_cpus" if cpus else "nn_next"  # a CPUMAP holds its programs: pinned to show
            bpf_sys.pin(prog.maps[nxt], f"{pdir}/{nxt}")
            for s, p in enumerate(prog.stages[1:], 1):
                last = s == len(cuts) - 1
                for pin, fd in zip(stage_pins(s, last, nxt),
                                   (p.prog_fd, p.maps["nn_model"], p.maps.get(nxt))):
                    bpf_sys.pin(fd, f"{pdir}/{pin}")

        with netns(ns):
            for pin, name, i in zip(LINK_PINS, ifaces, idx):
                try:
                    link = bpf_sys.xdp_link(i, prog.prog_fd, xdp_mode, name)
                except bpf_sys.BpfError as e:
                    raise AttachError(str(e)) from None
                try:  # from here the pin owns the attachment; remove_pins undoes it
                    bpf_sys.pin(link, f"{pdir}/{pin}")
                finally:
                    os.close(link)
        undo.pop_all()
    prog.close()  # the pins and the attachments hold the program now
    return record


def link_of(ifname: str) -> str | None:
    """The interface ifname is linked to (a veth's other end), if in this netns."""
    from pyroute2 import IPRoute, NetlinkError  # here: only --peer needs it (100 ms)
    with IPRoute() as ipr:  # opened on this thread: in its network namespace
        try:
            (link,) = ipr.link("get", ifname=ifname)
            # IFLA_LINK_NETNSID: the other end is in another namespace, and
            # IFLA_LINK is its ifindex there.
            if link.get_attr("IFLA_LINK_NETNSID") is not None or not link.get_attr("IFLA_LINK"):
                return None
            (peer,) = ipr.link("get", index=link.get_attr("IFLA_LINK"))
        except NetlinkError:
            return None
        return peer.get_attr("IFLA_IFNAME")


def load_model(path: str) -> model_file.Model:
    """The validated model; its sha256 is that of the bytes it was parsed from."""
    from xdpnn.loader.errors import ModelFileError
    try:
        return model_file.load(path)
    except model_file.ModelError as e:
        raise ModelFileError(f"load model {e}") from None


def _bits_text(bits: int, signed: bool) -> str:
    return "binary inputs" if bits == 1 else f"{bits}-bit {'signed' if signed else 'unsigned'} inputs"


def binary_inputs_only(model, path, what: str) -> None:
    """Refuses a model with multi-bit inputs (format version 2) for the
    commands that build or read inputs as bits: serving and its clients,
    the user-space servers and the benchmark baselines."""
    from xdpnn.loader.errors import ModelFileError
    if model.input_bits > 1:
        raise ModelFileError(f"{what}: model {path} takes {model.input_bits}-bit inputs; "
                             f"{what} supports binary-input models only")


def one_program_only(model, path, what: str, why_instead: str) -> None:
    """Refuses, before anything is compiled, a model that runs only as
    tail-call stages (over one program's verifier budget: plan.auto_cuts)
    for a command that builds it as one program; why_instead: why that
    command cannot stage it, and what to use."""
    from xdpnn.loader import plan
    cuts = plan.auto_cuts(model)
    if cuts:
        name = f"{path} ({model.shape})" if path else model.shape
        raise UsageError(f"{what}: model {name} needs {len(cuts)} tail-call stages (over one "
                         f"program's verifier budget); {why_instead} (docs/partitioning.md)")


def _validate(model, path):
    from xdpnn.loader.errors import ModelFileError
    try:
        model.validate()
    except model_file.ModelError as e:
        raise ModelFileError(f"load model {path}: {e}") from None


def encode_record(record: dict) -> bytes:
    """The attach record as nn_meta stores it; refused if it does not fit.
    Commands call it before their first write, so a record that does not
    fit changes nothing."""
    data = json.dumps(record).encode()
    if len(data) >= maps.META_BYTES:
        raise ModelFileError(f"attach record of {record['model']['path']} would be {len(data)} "
                             f"bytes, nn_meta holds {maps.META_BYTES - 1} (its class names take "
                             f"{len(json.dumps(record['model']['classes']))}): nothing changed")
    return data.ljust(maps.META_BYTES, b"\0")


def write_record(meta_fd: int, data: bytes) -> None:
    bpf_sys.map_update(meta_fd, 0, data, "nn_meta")


def read_record(pdir: str) -> dict:
    fd = bpf_sys.get_pinned(f"{pdir}/nn_meta")
    try:
        raw = bpf_sys.map_lookup(fd, 0, maps.META_BYTES, "nn_meta")
    finally:
        os.close(fd)
    try:
        record = json.loads(raw.rstrip(b"\0") or b"{}")
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise StateError(f"{pdir}/nn_meta: not an xdpnn attach record")
    return record


def remove_pins(pdir: str) -> None:
    for entry in os.listdir(pdir):
        os.unlink(f"{pdir}/{entry}")
    os.rmdir(pdir)
    try:
        os.rmdir(PIN_ROOT)  # the last one out leaves bpffs as it was
    except OSError:
        pass  # other datapaths are still attached


class _Required(dict):
    """A dict whose missing keys are a StateError: what an interrupted attach
    or detach leaves is reported, never a traceback."""

    def __init__(self, what: str, items=()):
        super().__init__(items)
        self.what = what

    def __missing__(self, key):
        raise StateError(f"{self.what} has no {key} (an attach or detach was interrupted?): "
                         "`xdpnn detach` removes what is left")


class Pinned:
    """Opens an attached datapath's pins; use as a context manager."""

    def __init__(self, iface: str, ns: str | None):
        self.dir = pin_dir(iface, ns)
        if not os.path.isdir(self.dir):
            raise StateError(f"{iface}{' in netns ' + ns if ns else ''}: xdpnn is not attached "
                             f"(no {self.dir}; see `xdpnn status`)")
        self.fds = _Required(f"{iface}: the pin folder {self.dir}")

    def __enter__(self):
        for name in ("prog",) + maps.MAP_NAMES + maps.FLOW_MAP_NAMES:
            path = f"{self.dir}/{name}"
            if os.path.exists(path):
                self.fds[name] = bpf_sys.get_pinned(path)
        self.record = _Required(f"{self.dir}: the attach record",
                                read_record(self.dir) if "nn_meta" in self.fds else {})
        return self

    def __exit__(self, *exc):
        for fd in self.fds.values():
            os.close(fd)

    def open(self, name: str) -> int:
        """Another pin of the folder (an added model's); closed with the rest."""
        if name not in self.fds:
            try:
                self.fds[name] = bpf_sys.get_pinned(f"{self.dir}/{name}")
            except bpf_sys.BpfError as e:
                raise StateError(f"{e} (a model add or remove was interrupted?): `xdpnn model "
                                 "remove` or `xdpnn detach` removes what is left") from None
        return self.fds[name]

    def check_complete(self) -> None:
        """Every pin and the attach record are there, or a StateError says what is not."""
        missing = [n for n in ("prog",) + maps.MAP_NAMES if n not in self.fds]
        missing += [] if "model" in self.record else ["the attach record"]
        if missing:
            raise StateError(f"{self.dir}: {', '.join(missing)} missing (an attach or detach "
                             "was interrupted?): `xdpnn detach` removes what is left")


def detach(iface: str, ns: str | None) -> dict:
    """Detaches the links of the interface and its peer, then removes the pins.

    The pinned links own the attachments, so this works wherever the
    interfaces are now (moved to another namespace, or gone); if a link
    cannot be detached, the pins stay and the error says why.
    """
    ensure_bpffs()
    with writer_lock(iface, ns):
        return _detach(iface, ns)


def _detach(iface: str, ns: str | None) -> dict:
    report = {"iface": iface, "netns": ns, "detached": [], "skipped": []}
    with Pinned(iface, ns) as p:
        names = [p.record.get("iface", iface), p.record.get("peer", "the peer")]
        for pin, name in zip(LINK_PINS, names):
            if not os.path.exists(f"{p.dir}/{pin}"):
                continue  # no peer, or an attach killed before it got here
            fd = bpf_sys.get_pinned(f"{p.dir}/{pin}")
            try:
                gone = bpf_sys.link_info(fd).xdp_ifindex == 0
                bpf_sys.link_detach(fd, f"XDP link of {name}")
            finally:
                os.close(fd)
            if gone:
                report["skipped"].append(f"{name}: already detached, or the interface is gone")
            else:
                report["detached"].append(name)
    remove_pins(p.dir)
    return report


def status() -> list[dict]:
    """Every attached datapath, with whether its interfaces still carry it."""
    if not os.path.isdir(PIN_ROOT):
        return []
    out = []
    for entry in sorted(os.listdir(PIN_ROOT)):
        iface, _, ns = entry.partition("@")
        try:
            out.append(_status_of(iface, ns or None))
        except (OSError, ValueError, XdpnnError) as e:
            out.append({"iface": iface, "netns": ns or None, "state": f"broken: {e}"})
    return out


def _status_of(iface: str, ns: str | None) -> dict:
    with Pinned(iface, ns) as p:
        p.check_complete()
        rec = p.record
        prog_id = bpf_sys.prog_info(p.fds["prog"]).id
        model_map = compile.model_map_id(p.fds["nn_model"])
        live = []
        for name in [rec["iface"]] + ([rec["peer"]] if rec.get("peer") else []):
            try:
                with netns(ns):
                    live.append(bpf_sys.xdp_prog_id(ifindex(name, ns)) == prog_id)
            except (AttachError, bpf_sys.BpfError):
                live.append(False)
        models = added_models(p)
    return {**rec, "model_map_id": model_map, "models": models,
            "state": "attached" if all(live) else "stale (interface gone or replaced)"}


def added_models(p: Pinned) -> dict[str, dict]:
    """The added models (`xdpnn model add`) as the attach record names them,
    with what is in force: the program in their nn_progs slot (prog_id, 0 if
    none) and their model map."""
    out = {}
    slots = progarray.slots(p.fds["nn_progs"], "nn_progs")
    for k, m in sorted(p.record.get("models", {}).items(), key=lambda kv: int(kv[0])):
        out[k] = {**m, "prog_id": slots.get(int(k), 0),
                  "model_map_id": compile.model_map_id(p.open(added_pin(int(k), "nn_model")))}
    return out


def stats(iface: str, ns: str | None) -> dict:
    """Counters since attach, named: totals, and under "ingress" the counts of
    each interface packets arrived on (IFACE, and the peer if there is one)."""
    with Pinned(iface, ns) as p:
        sides = [compile.read_counters(p.fds["nn_counters"], s) for s in range(maps.SIDES)]
        rec = p.record
        serving = compile.read_serve_counters(p.fds["nn_serve"]) if rec.get("serve") else None
        added = {k: (m, compile.read_counters(p.open(added_pin(int(k), "nn_counters"))))
                 for k, m in rec.get("models", {}).items()}
        table = read_flow_table(p) if rec.get("input") == "flow" else None
    classes = rec["model"]["classes"]

    def named(c):
        return {"classes": {name: int(c["class_packets"][k]) for k, name in enumerate(classes)},
                "input": {name: int(v) for name, v in zip(maps.INPUT_RESULTS, c["input"])},
                "verdict": {name: int(v) for name, v in zip(maps.VERDICTS, c["verdict"])}}
    total = {k: sum(c[k] for c in sides) for k in sides[0]}
    out = {"iface": iface, "netns": ns, "time": time.time(), **named(total),
           "ingress": {name: named(c) for name, c in zip((rec["iface"], rec.get("peer")), sides)
                       if name}}
    if rec.get("input") == "flow":
        # Flows by their latest class; the sum over CPUs is taken modulo 2^64.
        events = {n: int(v) for n, v in zip(maps.FLOW_EVENTS, total["flow"])}
        out["flows"] = {"events": events,
                        "classes": {name: int(total["class_flows"][k].astype("int64"))
                                    for k, name in enumerate(classes)}}
        if table is not None:
            out["flows"]["table"] = flow_table_summary(table, events["new"], classes)
    if rec.get("stages"):
        from xdpnn.loader import stages
        with Pinned(iface, ns) as p:
            out["stages"] = {"layers": rec["stages"],
                             "errors": stages.read_errors(p.open("nn_stage_err"))}
            if rec.get("stage") is not None:
                out["stages"]["stage"] = rec["stage"]  # a hop: this one alone
    if serving:
        # Per model id; ids without a model show only if something asked for them.
        out["serve"] = {f"model {k}" if k < maps.SRV["models"] else "other": e
                        for k, e in enumerate(serving)
                        if k == 0 or e["requests"] or str(k) in added}
    # Each added model's program counts its own classes (the totals above
    # are the attached program's: model 0, and every frame it keeps).
    out["models"] = {k: {"shape": m["shape"], "path": m["path"],
                         "classes": {name: int(c["class_packets"][j])
                                     for j, name in enumerate(m["classes"])},
                         "verdict": {name: int(v) for name, v in zip(maps.VERDICTS, c["verdict"])}}
                     for k, (m, c) in sorted(added.items(), key=lambda kv: int(kv[0]))}
    return out


def read_flow_table(p: Pinned) -> dict | None:
    """The flow table's entries and size; None for a datapath attached
    before the table was pinned (flow mode's first release)."""
    if "nn_flows" not in p.fds:
        return None
    fd = p.fds["nn_flows"]
    return {"capacity": bpf_sys.map_info(fd).max_entries,
            "entries": bpf_sys.map_entries(fd, maps.FlowKey, maps.Flow, "nn_flows")}


def flow_table_summary(table: dict, new: int, classes: list[str]) -> dict:
    """What the table holds now: entries, by state and by class, and the
    evictions that the counters cannot see (bpf/flow.h): every entry entered
    the table as a `new` flow and leaves it only when the LRU evicts it, so
    evicted = new - entries."""
    entries = [f for _, f in table["entries"]]
    by_class = {name: 0 for name in classes}
    for f in entries:
        if f.cls != maps.FLOW_NO_CLASS and f.cls < len(classes):
            by_class[classes[f.cls]] += 1
    return {"capacity": table["capacity"], "entries": len(entries),
            "evicted": max(0, new - len(entries)),
            "states": {s: sum(f.state == k for f in entries) for k, s in enumerate(maps.FLOW_STATES)},
            "classes": by_class}


def flows(iface: str, ns: str | None, limit: int | None = None) -> dict:
    """The flow table of a flow-mode datapath, most recent first: each flow's
    ends (initiator first), packets recorded, state, class and idle time."""
    with Pinned(iface, ns) as p:
        rec = p.record
        if rec.get("input") != "flow":
            raise StateError(f"{iface}: attached in {rec.get('input')} mode; only flow mode "
                             "keeps a flow table")
        table = read_flow_table(p)
        if table is None:
            raise StateError(f"{iface}: its flow table is not pinned (attached by an older "
                             "xdpnn): detach and attach again")
    classes = rec["model"]["classes"]
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # bpf_ktime_get_ns()'s clock
    rows = []
    for key, f in sorted(table["entries"], key=lambda kv: -kv[1].last_ns)[:limit]:
        ends = [(str(ipaddress.IPv4Address(key.addr[i])), key.port[i]) for i in (0, 1)]
        if ends[1] == (str(ipaddress.IPv4Address(f.init_addr)), f.init_port):
            ends.reverse()
        rows.append({"proto": key.proto, "initiator": list(ends[0]), "responder": list(ends[1]),
                     "packets": f.packets, "state": maps.FLOW_STATES[min(f.state, 2)],
                     "class": classes[f.cls] if f.cls < len(classes) else None,
                     "idle_s": round(max(0, now - f.last_ns) / 1e9, 3)})
    return {"iface": iface, "netns": ns, "capacity": table["capacity"],
            "entries": len(table["entries"]), "flows": rows}


def swap(iface: str, ns: str | None, model_path: str, model_id: int = 0) -> dict:
    """Puts a same-shape model in force: a new inner map of nn_model, filled,
    then put in place of the old one in one update (docs/datapath.md).
    model_id: the attached model (0) or an added one (`xdpnn model add`),
    each with its own nn_model; the others are not touched."""
    new = load_model(model_path)
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        rec = p.record
        if model_id:
            old = added_model(rec, iface, model_id)
            mode = old["input"].get("mode", "payload")
            outer = p.open(added_pin(model_id, "nn_model"))
        else:
            old, mode, outer = rec["model"], rec["input"], p.fds["nn_model"]
            if rec.get("stages"):
                raise UsageError(f"{iface}: the model runs as {len(rec['stages'])} stages, "
                                 "each checking the model's digest: detach and attach")
        # The value bits of the inputs are compiled in too (bpf/bnn_multibit.h).
        old_in = old.get("input") if isinstance(old.get("input"), dict) else {}
        old_bits = (old_in.get("bits", 1), old_in.get("signed", False))
        new_bits = (new.input_bits, new.input_signed)
        if new.shape != old["shape"] or new.mode != mode or new_bits != old_bits:
            which = f"model {model_id}" if model_id else "the attached one"
            raise UsageError(f"{iface}: model {model_path} is {new.shape} ({new.mode}, "
                             f"{_bits_text(*new_bits)}); {which} "
                             f"is {old['shape']} ({mode}, {_bits_text(*old_bits)}): "
                             + ("remove and add it" if model_id else "detach and attach"))
        # Actions go by position, as the kernel's nn_config holds them: class
        # k of the new model takes class k's action, under its own name.
        if model_id:
            entry = {**old, **model_summary(new, model_path)}
            if "actions" in old:  # chosen by port; a served model answers every request
                entry["actions"] = dict(zip(new.classes, old["actions"].values()))
            rec["models"][str(model_id)] = entry
        else:
            rec["model"] = model_summary(new, model_path)
            rec["actions"] = dict(zip(new.classes, rec["actions"].values()))
        record = encode_record(rec)
        with ExitStack() as fds:
            old_fd = bpf_sys.map_fd_by_id(compile.model_map_id(outer))
            fds.callback(os.close, old_fd)
            new_fd = compile.new_model_map(outer, new)
            fds.callback(os.close, new_fd)
            compile.put_model(outer, new_fd)
            try:
                write_record(p.fds["nn_meta"], record)
            except BaseException:
                compile.put_model(outer, old_fd)  # status must name the model in force
                raise
    return rec


def added_pin(model_id: int, name: str) -> str:
    """The pin of an added model's program ("prog") or map, beside the
    attached program's: detach removes the folder, and them with it.
    bpffs refuses names with a dot."""
    return f"model{model_id}_{name}"


def added_model(rec: dict, iface: str, model_id: int) -> dict:
    """The attach record's entry of model model_id, added to iface."""
    models = rec.get("models", {})
    if str(model_id) not in models:
        have = ", ".join(["0"] + sorted(models, key=int))
        raise StateError(f"{iface}: no model {model_id} (its models: {have}; see "
                         f"`xdpnn model list {iface}`)")
    return models[str(model_id)]


def set_options(iface: str, ns: str | None, actions: list[str], port: int | None) -> dict:
    """Changes per-class actions and the request port of an attached datapath."""
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        rec = p.record
        classes = rec["model"]["classes"]
        if actions and rec.get("stage") is not None and rec["stage"] < len(rec["stages"]) - 1:
            raise UsageError(f"--action: {iface} runs stage {rec['stage']}, not the last "
                             f"(stage {len(rec['stages']) - 1} takes the classes' actions)")
        cfg = compile.read_config(p.fds["nn_config"])
        current = [rec["actions"][c] for c in classes]
        new = parse_actions(actions, classes, current)
        if port is not None:
            if rec["input"] != "payload":
                raise UsageError(f"--port: {iface} runs in {rec['input']} mode, which has no port")
            if not 1 <= port <= 65535:
                raise UsageError(f"--port {port}: expected 1..65535")
            cfg.udp_port = port
            rec["port"] = port
        rec["actions"] = dict(zip(classes, new))
        record = encode_record(rec)
        with netns(ns):  # the devmap resolves ifindexes in the caller's namespace
            targets = redirect_targets(classes, new, current, rec["iface"], rec.get("peer"), ns)
            # A class's slot is filled before its action says redirect, and
            # emptied after it stops saying so: no packet meets an empty slot.
            write_redirects(p.fds["nn_tx_port"], targets)
        config_actions(cfg, new)
        compile.write_config(p.fds["nn_config"], cfg)
        for k, action in enumerate(new):
            if not action.startswith("redirect:"):
                bpf_sys.map_delete(p.fds["nn_tx_port"], maps.TX_TARGETS + k, "nn_tx_port")
        write_record(p.fds["nn_meta"], record)
    return rec

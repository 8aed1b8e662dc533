"""Several models on one interface: `xdpnn model add`, `model remove` and
`model list` (docs/serving.md, "Several models").

The attached serving program answers model id 0 and tail-calls slot N of
its nn_progs for a request to id N.  Adding model N builds bpf/xdpnn.c for
that model's shape as its own program (model id N, sharing the attached
program's nn_config and nn_serve through their pins), pins it and its maps
beside the attached program's (datapath.added_pin), and puts it in slot N:
from that update on, requests to N are its.  Removing it empties the slot
first (requests to N get the unknown_model reply again), then removes its
pins.  Each command holds the writer lock and changes nothing before every
check passed; a failed add leaves no pin, no slot and no record behind.
"""
from __future__ import annotations

import ctypes
import os
import re
import time
from contextlib import ExitStack

from xdpnn.loader import bpf_sys, compile, maps, progarray
from xdpnn.loader.datapath import (Pinned, added_model, added_models, added_pin,
                                   binary_inputs_only, config_actions, encode_record,
                                   ensure_bpffs, load_model, model_summary,
                                   one_program_only, parse_actions, writer_lock, write_record)
from xdpnn.loader.errors import StateError, UsageError

IDS = range(1, maps.SRV["models"])  # 0 is the attached model; nn_progs has a slot per id


def check_id(model_id: int, command: str) -> None:
    if model_id == 0:
        raise UsageError(f"--id 0: model 0 is the attached model; `xdpnn swap` replaces it, "
                         f"`xdpnn detach` removes it (model {command} takes ids "
                         f"{IDS.start}..{IDS.stop - 1})")
    if model_id not in IDS:
        raise UsageError(f"--id {model_id}: expected {IDS.start}..{IDS.stop - 1}")


def add(iface: str, ns: str | None, model_path: str, model_id: int, port: int | None = None,
        actions: list[str] = ()) -> dict:
    """Compiles model_path for its own shape and runs it as model_id on
    iface, beside the models there; all or nothing.  On a serving interface
    requests choose it by model id; otherwise packets choose it by their
    TCP or UDP destination port, and it takes its own actions."""
    check_id(model_id, "add")
    model = load_model(model_path)
    binary_inputs_only(model, model_path, "model add")
    one_program_only(model, model_path, "model add",
                     "an added model is one program: attach it on an interface of its own "
                     "(`xdpnn attach IFACE --model F`, with --serve to serve it)")
    ensure_bpffs()
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        p.check_complete()
        rec = p.record
        serving = bool(rec.get("serve"))
        if serving:
            check_served(model, model_path, port, actions)
        else:
            check_by_port(rec, iface, model, model_path, port)
        acts = parse_actions(list(actions), model.classes)
        if any(a.startswith("redirect:") for a in acts):
            raise UsageError("--action: an added model's classes take count, pass or drop "
                             "(redirect ports belong to the attached model)")
        models = rec.get("models", {})
        in_slot = progarray.prog_id(p.fds["nn_progs"], model_id, "nn_progs")
        if str(model_id) in models or in_slot:
            what = models.get(str(model_id), {}).get("path", f"program id {in_slot}")
            raise StateError(f"{iface}: model id {model_id} is in use ({what}): `xdpnn model "
                             f"remove {iface} --id {model_id}` first, or `xdpnn swap --id`")
        # The program names the pin folder in C (bpf/tailcall.h, NN_PIN_DIR).
        if not re.fullmatch(r"[\w.@+-]+", os.path.basename(p.dir)):
            raise UsageError(f"{p.dir}: model add needs interface and namespace names of "
                             "letters, digits and ._@+- only")
        entry = {**model_summary(model, model_path), "prog_id": 2**32 - 1,
                 "added_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if not serving:
            entry.update(port=port, actions=dict(zip(model.classes, acts)))
        rec["models"] = {**models, str(model_id): entry}
        encode_record(rec)  # before compiling: the widest prog_id, so it fits later too
        pins = pins_of(entry)
        leftover = [n for n in pins if os.path.exists(f"{p.dir}/{added_pin(model_id, n)}")]
        if leftover:
            raise StateError(f"{p.dir}: {added_pin(model_id, leftover[0])} is left from an "
                             f"interrupted command: `xdpnn model remove {iface} --id "
                             f"{model_id}` removes it")

        prog = compile.build(model, defines=("NN_SERVE",) if serving else (), added_to=p.dir,
                             model_id=model_id)
        with ExitStack() as undo:
            undo.callback(prog.close)
            if not serving:
                # Its own request port (payload mode) and actions; the
                # attached program's forwarding pair.
                cfg = maps.Config(udp_port=port)
                cfg.ifindex[:] = compile.read_config(p.fds["nn_config"]).ifindex[:]
                config_actions(cfg, acts)
                compile.write_config(prog.maps["nn_config"], cfg)
            fds = {"prog": prog.prog_fd, **prog.maps}
            for name in pins:
                path = f"{p.dir}/{added_pin(model_id, name)}"
                bpf_sys.pin(fds[name], path)
                undo.callback(os.unlink, path)
            entry["prog_id"] = bpf_sys.prog_info(prog.prog_fd).id
            record = encode_record(rec)
            progarray.put(p.fds["nn_progs"], model_id, prog.prog_fd, "nn_progs")
            undo.callback(progarray.clear, p.fds["nn_progs"], model_id, "nn_progs")
            if not serving:
                route_port(p, port, model_id)
                undo.callback(route_port, p, port, 0)
            write_record(p.fds["nn_meta"], record)
            undo.pop_all()
        prog.close()  # the pins and the slot hold the program now
    return {"iface": iface, "netns": ns, "id": model_id, **entry}


def check_served(model, model_path: str, port, actions) -> None:
    if model.mode != "payload":
        raise UsageError(f"model {model_path} reads {model.mode}; a served model reads its "
                         "inputs from requests (payload input)")
    if port is not None or actions:
        raise UsageError(f"--{'port' if port is not None else 'action'}: a serving interface "
                         "chooses models by the requests' model id, and answers every request")


def check_by_port(rec: dict, iface: str, model, model_path: str, port) -> None:
    if port is None:
        raise UsageError(f"{iface}: not serving, so an added model is chosen by destination "
                         "port: give --port")
    if "flow" in (model.mode, rec["input"]):
        raise UsageError(f"model {model_path}: flow mode keeps one flow table per interface; "
                         "models chosen by port read payload or headers")
    if rec["input"] == "payload" and rec.get("port") == port:
        raise UsageError(f"--port {port}: the attached model's request port")
    taken = {m.get("port"): k for k, m in rec.get("models", {}).items()}
    if port in taken:
        raise StateError(f"{iface}: port {port} already goes to model {taken[port]}")


def pins_of(entry: dict) -> tuple[str, ...]:
    """An added model's pins: its program and maps; its nn_config too when
    chosen by port (it has actions of its own)."""
    return ("prog",) + (maps.PORT_MODEL_MAP_NAMES if entry.get("port") else maps.ADDED_MAP_NAMES)


def route_port(p: Pinned, port: int, model_id: int) -> None:
    """Sends packets to port to model_id's program (0: back to the attached
    model), and keeps nn_config.port_models, the attached program's cue to
    look ports up at all, equal to the number of routed ports."""
    table = p.fds["nn_port_models"]
    bpf_sys.map_update(table, port, ctypes.c_uint32(model_id), "nn_port_models")
    routed = sum(1 for m in p.record.get("models", {}).values() if m.get("port"))
    cfg = compile.read_config(p.fds["nn_config"])
    cfg.port_models = routed if model_id else routed - 1
    compile.write_config(p.fds["nn_config"], cfg)


def remove(iface: str, ns: str | None, model_id: int) -> dict:
    """Stops running model_id (its requests get unknown_model replies, its
    port's packets go to the attached model) and removes its program and
    pins; the other models are not touched."""
    check_id(model_id, "remove")
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        rec = p.record
        models = rec.get("models", {})
        listed = str(model_id) in models
        pins = [n for n in ("prog",) + maps.PORT_MODEL_MAP_NAMES
                if os.path.exists(f"{p.dir}/{added_pin(model_id, n)}")]
        if not listed and not pins:
            added_model(rec, iface, model_id)  # the StateError naming the models there
        entry = models.get(str(model_id), {})
        if entry.get("port"):  # its packets go back to the attached model first
            route_port(p, entry["port"], 0)
        models.pop(str(model_id), None)
        record = encode_record(rec)
        progarray.clear(p.fds["nn_progs"], model_id, "nn_progs")
        try:
            write_record(p.fds["nn_meta"], record)
        except BaseException:
            if "prog" in pins:  # put back what status names
                progarray.put(p.fds["nn_progs"], model_id,
                              p.open(added_pin(model_id, "prog")), "nn_progs")
            raise
        for name in pins:
            os.unlink(f"{p.dir}/{added_pin(model_id, name)}")
    return {"iface": iface, "netns": ns, "id": model_id, **entry}


def list_models(iface: str, ns: str | None) -> list[dict]:
    """Every model of iface, 0 first: what names it, what is in force, and
    its counters: serving, requests, replies and errors (requests answered
    or dropped with a status other than ok); by port, the port and the
    packets it classified."""
    with Pinned(iface, ns) as p:
        p.check_complete()
        rec = p.record
        rows = [{"id": 0, **rec["model"], "prog_id": bpf_sys.prog_info(p.fds["prog"]).id,
                 "model_map_id": compile.model_map_id(p.fds["nn_model"])}]
        rows += [{"id": int(k), **m} for k, m in added_models(p).items()]
        if rec.get("serve"):
            counters = compile.read_serve_counters(p.fds["nn_serve"])
            for r in rows:
                c = counters[r["id"]]
                r.update(requests=c["requests"], replies=c["replies"],
                         errors=c["requests"] - c["status"]["ok"])
            return rows
        rows[0]["port"] = rec.get("port")  # payload mode's; None: every other packet
        for r in rows:
            fd = p.fds["nn_counters"] if r["id"] == 0 else \
                p.open(added_pin(r["id"], "nn_counters"))
            r["classified"] = int(compile.read_counters(fd)["class_packets"].sum())
    return rows

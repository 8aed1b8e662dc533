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

import os
import re
import time
from contextlib import ExitStack

from xdpnn.loader import bpf_sys, compile, maps, progarray
from xdpnn.loader.datapath import (Pinned, added_model, added_models, added_pin, encode_record,
                                   binary_inputs_only, ensure_bpffs, load_model, model_summary, writer_lock,
                                   write_record)
from xdpnn.loader.errors import StateError, UsageError

IDS = range(1, maps.SRV["models"])  # 0 is the attached model; nn_progs has a slot per id
PINS = ("prog",) + maps.ADDED_MAP_NAMES


def check_id(model_id: int, command: str) -> None:
    if model_id == 0:
        raise UsageError(f"--id 0: model 0 is the attached model; `xdpnn swap` replaces it, "
                         f"`xdpnn detach` removes it (model {command} takes ids "
                         f"{IDS.start}..{IDS.stop - 1})")
    if model_id not in IDS:
        raise UsageError(f"--id {model_id}: expected {IDS.start}..{IDS.stop - 1}")


def add(iface: str, ns: str | None, model_path: str, model_id: int) -> dict:
    """Compiles model_path for its own shape and serves it as model_id on
    iface, beside the models there; all or nothing."""
    check_id(model_id, "add")
    model = load_model(model_path)
    if model.mode != "payload":
        raise UsageError(f"model {model_path} reads {model.mode}; a served model reads its "
                         "inputs from requests (payload input)")
    binary_inputs_only(model, model_path, "model add")
    ensure_bpffs()
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        p.check_complete()
        rec = p.record
        if not rec.get("serve"):
            raise UsageError(f"{iface}: not serving (requests name a model only with "
                             f"`xdpnn attach {iface} --model FILE --serve`)")
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
        rec["models"] = {**models, str(model_id): entry}
        encode_record(rec)  # before compiling: the widest prog_id, so it fits later too
        leftover = [n for n in PINS if os.path.exists(f"{p.dir}/{added_pin(model_id, n)}")]
        if leftover:
            raise StateError(f"{p.dir}: {added_pin(model_id, leftover[0])} is left from an "
                             f"interrupted command: `xdpnn model remove {iface} --id "
                             f"{model_id}` removes it")

        prog = compile.build(model, defines=("NN_SERVE",), added_to=p.dir, model_id=model_id)
        with ExitStack() as undo:
            undo.callback(prog.close)
            fds = {"prog": prog.prog_fd, **prog.maps}
            for name in PINS:
                path = f"{p.dir}/{added_pin(model_id, name)}"
                bpf_sys.pin(fds[name], path)
                undo.callback(os.unlink, path)
            entry["prog_id"] = bpf_sys.prog_info(prog.prog_fd).id
            record = encode_record(rec)
            progarray.put(p.fds["nn_progs"], model_id, prog.prog_fd, "nn_progs")
            undo.callback(progarray.clear, p.fds["nn_progs"], model_id, "nn_progs")
            write_record(p.fds["nn_meta"], record)
            undo.pop_all()
        prog.close()  # the pins and the slot hold the program now
    return {"iface": iface, "netns": ns, "id": model_id, **entry}


def remove(iface: str, ns: str | None, model_id: int) -> dict:
    """Stops serving model_id (its requests get unknown_model replies) and
    removes its program and pins; the other models are not touched."""
    check_id(model_id, "remove")
    with writer_lock(iface, ns), Pinned(iface, ns) as p:
        rec = p.record
        models = rec.get("models", {})
        listed = str(model_id) in models
        pins = [n for n in PINS if os.path.exists(f"{p.dir}/{added_pin(model_id, n)}")]
        if not listed and not pins:
            added_model(rec, iface, model_id)  # the StateError naming the models there
        entry = models.pop(str(model_id), {})
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
    """Every model iface serves, 0 first: what names it, what is in force,
    and its serving counters (errors: requests answered or dropped with a
    status other than ok)."""
    with Pinned(iface, ns) as p:
        p.check_complete()
        rec = p.record
        if not rec.get("serve"):
            raise UsageError(f"{iface}: not serving, so it has one model: see `xdpnn status`")
        counters = compile.read_serve_counters(p.fds["nn_serve"])
        rows = [{"id": 0, **rec["model"], "prog_id": bpf_sys.prog_info(p.fds["prog"]).id,
                 "model_map_id": compile.model_map_id(p.fds["nn_model"])}]
        rows += [{"id": int(k), **m} for k, m in added_models(p).items()]
    for r in rows:
        c = counters[r["id"]]
        r.update(requests=c["requests"], replies=c["replies"],
                 errors=c["requests"] - c["status"]["ok"])
    return rows

"""`xdpnn deploy PLAN` and `xdpnn undeploy PLAN`: every stage of a plan
attached where its placement says (docs/partitioning.md, "Placement and
deploy"), and removed again.

Deploy is all or nothing: each stage is one `attach` (itself all or
nothing), and a failure on stage k detaches stages k-1 .. 0 before the
error is reported, so no attachment and no pin is left.  Undeploy detaches
what the plan names and is attached with the plan's model, and says what
was not there.
"""
from __future__ import annotations

import os

from xdpnn.loader import datapath, plan
from xdpnn.loader.errors import ModelFileError, XdpnnError


def where(t: dict) -> str:
    """A stage's place, as `plan --hop` and `--at` take it: NS:IFACE[:PEER]."""
    return f"{t['netns'] or ''}:{t['iface']}" + (f":{t['peer']}" if t["peer"] else "")


def _name(t: dict) -> str:
    return "" if t["stage"] is None else f"stage {t['stage']} "


def deploy(plan_path: str, model_path: str | None = None, actions=()) -> dict:
    """Attaches every stage of the plan where it says; actions go to the
    stage that gives the class (the last; the only one off hops)."""
    p = plan.read(plan_path)
    todo = plan.targets(p, plan_path)
    if model_path is None:
        model_path = (p.get("model") or {}).get("path")
        if not isinstance(model_path, str):
            raise XdpnnError(f"deploy: plan {plan_path} names no model file: give --model")
        model = datapath.load_model(model_path)
        if model.sha256 != p["model"].get("sha256"):
            raise ModelFileError(f"deploy: model {model_path} is not the one plan {plan_path} "
                                 "was made for (its sha256 differs): give --model to use it")
    else:
        model = datapath.load_model(model_path)
    cuts = plan.load(plan_path, model)  # the plan's shape is the model's, before anything runs
    done = []
    try:
        for k, t in enumerate(todo):
            last = k == len(todo) - 1
            try:
                rec = datapath.attach(t["iface"], model_path, peer=t["peer"], ns=t["netns"],
                                      plan_path=plan_path, stage=t["stage"], cpus=t["cpus"],
                                      actions=actions if last else ())
            except XdpnnError as e:
                undone = _undo(done)
                raise type(e)(f"deploy: {_name(t)}at {where(t)}: {e}{undone}") from None
            done.append(t)
            t["prog_id"] = rec["prog_id"]
    except BaseException:  # Ctrl-C between two stages: the same undo (done is empty
        _undo(done)         # when the failed attach's own undo already ran)
        raise
    return {"plan": os.path.abspath(plan_path), "model": os.path.abspath(model_path),
            "chain": p["placement"]["chain"], "stages": [c.as_list() for c in cuts],
            "attached": [{**t, "where": where(t)} for t in todo]}


def _undo(done: list[dict]) -> str:
    """Detaches the stages attached so far, last first; what could not be."""
    failed, undone = [], []
    for t in reversed(done):
        try:
            datapath.detach(t["iface"], t["netns"])
            undone.append(f"{_name(t)}at {where(t)}".strip())
        except XdpnnError as e:
            failed.append(f"{_name(t)}at {where(t)}: {e}")
    done.clear()
    text = f" (detached again: {', '.join(undone)})" if undone else ""
    if failed:
        text += "; could not detach " + "; ".join(failed)
    return text


def undeploy(plan_path: str) -> dict:
    """Detaches every stage of the plan that is attached with the plan's
    model; reports the places where nothing was attached, and leaves
    alone (and reports) what is attached there but is not this plan's."""
    p = plan.read(plan_path)
    todo = plan.targets(p, plan_path)
    shape = (p.get("model") or {}).get("shape")
    rep = {"plan": os.path.abspath(plan_path), "detached": [], "not_attached": [], "other": []}
    for t in reversed(todo):
        place = f"{_name(t)}at {where(t)}"
        if not os.path.isdir(datapath.pin_dir(t["iface"], t["netns"])):
            rep["not_attached"].append(place)
            continue
        with datapath.Pinned(t["iface"], t["netns"]) as pinned:
            rec = dict(pinned.record)
        if rec.get("model", {}).get("shape") != shape or rec.get("stage") != t["stage"]:
            what = f"stage {rec['stage']}" if rec.get("stage") is not None else "a whole model"
            rep["other"].append(f"{place}: {what} of {rec.get('model', {}).get('shape')} is "
                                "attached there, not this plan's: left alone")
            continue
        datapath.detach(t["iface"], t["netns"])
        rep["detached"].append(place)
    return rep

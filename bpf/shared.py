"""The constants of bpf/xdpnn_shared.h, read from the header itself.

The XDP program #includes the header; Python parses it here, so sizes and
ids are written once.  This module imports nothing of xdpnn, so the trainer
and the loader can both use it.

Python names of enumerators: the enumerator without the prefix its enum's
members share (up to that prefix's last underscore), in lower case:
NN_IN_SHORT_PAYLOAD -> "short_payload", NN_ACT_DROP -> "drop".  A name
that still starts with an underscore (NN_IN__COUNT) is the enum's count,
not a value.
"""
from __future__ import annotations

import ast
import operator
import os
import re
from importlib import resources

HEADER = resources.files("xdpnn.bpf") / "xdpnn_shared.h"

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^[ \t]*#define[ \t]+(\w+)[ \t]+(.+?)[ \t]*$", re.M)
_ENUM = re.compile(r"\benum[ \t]+(\w+)\s*\{(.*?)\}\s*;", re.S)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _value(expr: str, known: dict[str, int]) -> int:
    """An integer literal, a known name, or sums, differences and products of them."""
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"{HEADER.name}: cannot read '{expr}' (integers, sums and products "
                         "of earlier names only)")
    return ev(ast.parse(expr.strip(), mode="eval").body)


def parse(text: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(#define name -> value, enum name -> {enumerator: value}) of a header.

    Include guards (a #define without a value) are skipped; enumerators
    without '=' follow the previous one, as in C."""
    text = _COMMENTS.sub("", text)
    known: dict[str, int] = {}
    for name, expr in _DEFINE.findall(text):
        known[name] = _value(expr, known)
    defines = dict(known)
    enums = {}
    for enum, body in _ENUM.findall(text):
        members, nxt = {}, 0
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, expr = (s.strip() for s in item.partition("="))
            nxt = _value(expr, known) if expr else nxt
            members[name] = known[name] = nxt
            nxt += 1
        enums[enum] = members
    return defines, enums


def python_names(members: dict[str, int]) -> tuple[str, ...]:
    """An enum's values as Python names, in value order (module docstring)."""
    prefix = os.path.commonprefix(list(members))
    prefix = prefix[:prefix.rfind("_") + 1]
    named = sorted((v, n[len(prefix):].lower()) for n, v in members.items())
    names = tuple(n for _, n in named if not n.startswith("_"))
    if [v for v, n in named if not n.startswith("_")] != list(range(len(names))):
        raise ValueError(f"{HEADER.name}: enum values must run 0, 1, 2, ...: {members}")
    return names


DEFINES, ENUMS = parse(HEADER.read_text())
ACTIONS = python_names(ENUMS["nn_action"])              # count, pass, drop, redirect
INPUT_RESULTS = python_names(ENUMS["nn_input_result"])  # classified, other, ...
VERDICTS = python_names(ENUMS["nn_verdict"])            # aborted, drop, pass, tx, redirect
MAX_CLASSES = DEFINES["NN_MAX_CLASSES"]
FEATURE_BYTES = DEFINES["NN_FEATURE_BYTES"]
FEATURE_PAYLOAD = DEFINES["NN_FEATURE_PAYLOAD"]
META_BYTES = DEFINES["NN_META_BYTES"]
SIDES = DEFINES["NN_SIDES"]
TX_TARGETS = DEFINES["NN_TX_TARGETS"]
TX_SLOTS = DEFINES["NN_TX_SLOTS"]
SERVE_STATUS = python_names(ENUMS["nn_srv_status"])    # ok, bad_magic, ...
SRV = {k[len("NN_SRV_"):].lower(): v for k, v in DEFINES.items() if k.startswith("NN_SRV_")}
INPUT_MODES = {"payload": DEFINES["NN_INPUT_PAYLOAD"], "headers": DEFINES["NN_INPUT_HEADERS"],
               "flow": DEFINES["NN_INPUT_FLOW"]}
FLOW_EVENTS = python_names(ENUMS["nn_flow_event"])     # new, expired, final, cached
FLOW = {k[len("NN_FLOW_"):].lower(): v for k, v in DEFINES.items() if k.startswith("NN_FLOW_")}

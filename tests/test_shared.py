"""bpf/xdpnn_shared.h is the one source of the numbers the program and the
loader share: the Python side parses it (bpf/shared.py).  These tests fail
if the parser and the header, or the parser and the compiler, disagree."""
from __future__ import annotations

import ctypes
import re

import pytest

from xdpnn.bpf import shared
from xdpnn.loader import maps
from xdpnn.trainer import features


def test_parser_reads_defines_expressions_and_implicit_enum_values():
    text = """/* a comment with #define NOT_THIS 1 */
    #ifndef GUARD_H
    #define GUARD_H
    #define A 4 // four
    #define B (A + 2 * 3)
    enum e { E_X = 0, E_Y, E_LONG_NAME = B, E__COUNT, };
    """
    defines, enums = shared.parse(text)
    assert defines == {"A": 4, "B": 10}
    assert enums == {"e": {"E_X": 0, "E_Y": 1, "E_LONG_NAME": 10, "E__COUNT": 11}}
    assert shared.python_names({"NN_IN_A": 0, "NN_IN_SHORT_B": 1, "NN_IN__COUNT": 2}) == \
        ("a", "short_b")
    with pytest.raises(ValueError):
        shared.python_names({"E_X": 0, "E_Y": 2})
    with pytest.raises(ValueError):
        shared.parse("#define C sizeof(int)")


def test_every_name_in_the_header_is_parsed():
    text = re.sub(r"/\*.*?\*/", "", shared.HEADER.read_text(), flags=re.S)
    defined = set(re.findall(r"#define\s+(NN_\w+)\s+\S", text))
    enumerated = set(re.findall(r"^\s*(NN_\w+)\s*(?:=[^,]*)?,", text, re.M))
    assert defined == set(shared.DEFINES)
    assert enumerated == {n for e in shared.ENUMS.values() for n in e}


def test_python_uses_the_parsed_values():
    assert features.INPUT_RESULTS is shared.INPUT_RESULTS
    assert features.FEATURE_BYTES == shared.DEFINES["NN_FEATURE_BYTES"]
    assert maps.ACTIONS == ("count", "pass", "drop", "redirect")
    assert maps.VERDICTS == ("aborted", "drop", "pass", "tx", "redirect")
    assert features.INPUT_RESULTS[0] == "classified"
    assert features.INPUT_RESULTS[-1] == "request_error"
    assert len(features.INPUT_RESULTS) == shared.ENUMS["nn_input_result"]["NN_IN__COUNT"]


@pytest.mark.root
def test_parsed_values_are_what_the_compiler_sees():
    """Each value becomes an array size in a struct BCC compiles from the header."""
    from xdpnn.loader import compile

    BPF = compile.import_bcc()
    names = dict(shared.DEFINES)
    for members in shared.ENUMS.values():
        names.update(members)
    fields = "".join(f"\tchar v_{n}[{n} + 1];\n" for n in names)
    text = (f'#include "xdpnn_shared.h"\nstruct probe {{\n{fields}}};\n'
            "BPF_ARRAY(probe, struct probe, 1);\n")
    with compile.captured_stderr():
        bpf = BPF(text=text, cflags=[f"-I{compile.BPF_DIR}"])
    try:
        leaf = bpf["probe"].Leaf
        compiled = {f[0][2:]: ctypes.sizeof(f[1]) - 1 for f in leaf._fields_}
    finally:
        bpf.cleanup()
    assert compiled == names

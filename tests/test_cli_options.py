"""Every option of every command, given bad values: a documented exit code
and one line of error, never a traceback.  The commands run in this process
(cli.main), each from a base command line that fails fast and harmlessly
(a missing model file, an empty namespace), so that a value the command
wrongly accepts still ends in an error rather than in real work.
"""
from __future__ import annotations

import json

import pytest

from xdpnn.loader import cli, errors

BAD_VALUES = ["", " ", "x", "-1", "0", "nan", "inf", "1e999", "99999999999999999999",
              "../..", "/tmp", "²", "a=b", "all=", "=drop", "0x10"]
DOCUMENTED = {code for code, _ in errors.exit_code_list()} - {errors.InternalError.exit_code}


def bases(tmp, ns):
    """A base command line per command: (argv before the command, command words,
    positionals, options)."""
    missing = str(tmp / "missing.npz")
    return {
        "attach": (["-n", ns], ["attach"], ["xf0"], {"--model": missing}),
        "detach": (["-n", ns], ["detach"], ["lo"], {}),
        "status": ([], ["status"], [], {}),
        "stats": (["-n", ns], ["stats"], ["lo", "0.01", "1"], {}),
        "flows": (["-n", ns], ["flows"], ["lo"], {"--limit": "5"}),
        "swap": (["-n", ns], ["swap"], ["lo"], {"--model": missing}),
        "set": (["-n", ns], ["set"], ["lo"], {"--action": "all=drop"}),
        "predict": ([], ["predict"], [], {"--model": missing, "--hex": "00" * 14}),
        "verify": ([], ["verify"], [], {"--model": missing}),
        "plan": ([], ["plan"], [], {"--model": missing, "--stages": "2"}),
        "deploy": ([], ["deploy"], [str(tmp / "missing.json")], {"--model": missing}),
        "undeploy": ([], ["undeploy"], [str(tmp / "missing.json")], {}),
        "model random": ([], ["model", "random"], ["100-7-3"], {"--out": str(tmp / "r.npz")}),
        "model show": ([], ["model", "show"], [missing], {}),
        "model add": (["-n", ns], ["model", "add"], ["lo"], {"--model": missing, "--id": "1"}),
        "model remove": (["-n", ns], ["model", "remove"], ["lo"], {"--id": "1"}),
        "model list": (["-n", ns], ["model", "list"], ["lo"], {}),
        "send": (["-n", ns], ["send"], ["xf0"], {"--count": "1"}),
        "train": ([], ["train"], [], {"--data": f"csv:{tmp}/missing.csv",
                                      "--out": str(tmp / "t.npz")}),
        "bench": ([], ["bench"], [], {"--model": missing, "--quick": None}),
        "demo": ([], ["demo"], [], {"--model": missing}),
        "exporter": (["-n", ns], ["exporter"], ["lo"], {"--listen": "127.0.0.1:1"}),
        "query": (["-n", ns], ["query"], ["198.18.0.2"], {"--inputs": missing}),
        "serve-userspace": (["-n", ns], ["serve-userspace"], [], {"--model": missing}),
        "import": ([], ["import"], [str(tmp / "missing.onnx")], {"--out": str(tmp / "i.npz")}),
        "export": ([], ["export"], [missing], {"--out": str(tmp / "e.onnx")}),
        "evaluate": ([], ["evaluate"], [], {"--model": missing, "--pcaps": str(tmp)}),
        "capture": ([], ["capture"], [], {"--out": str(tmp / "c"), "--classes": "none"}),
    }


def argv_of(pre, words, positionals, options):
    argv = list(pre) + list(words) + list(positionals)
    for flag, value in options.items():
        argv += [flag] if value is None else [flag, value]
    return argv


def variants(tmp, ns):
    """(id, argv) for each bad value in each option and positional."""
    table = bases(tmp, ns)
    assert set(table) == set(cli.COMMANDS), "a command without a base command line"
    for name, (pre, words, positionals, options) in table.items():
        yield name, argv_of(pre, words, positionals, options)
        c = cli.COMMANDS[name]
        flags = [o for opt in c.options
                 for o in (opt[2] if opt[0] == "group" else [opt])]
        for flags_, kw in flags:
            if kw.get("action") == "store_true":
                continue
            for bad in BAD_VALUES:
                if flags_[0].startswith("-"):
                    opts = {k: v for k, v in options.items()
                            if not any(k == f for f in flags_)}
                    # Mutually exclusive partners would hide the value behind a usage error.
                    if opt_group(c, flags_[0]):
                        opts = {k: v for k, v in opts.items() if not opt_group(c, k)}
                    opts[flags_[0]] = bad
                    yield name, argv_of(pre, words, positionals, opts)
                else:
                    i = [f for f, _ in flags if not f[0].startswith("-")].index(flags_)
                    pos = list(positionals) + ["lo"] * (i + 1 - len(positionals))
                    pos[i] = bad
                    yield name, argv_of(pre, words, pos, options)
        for bad in BAD_VALUES:  # the global options, after the command
            yield name, argv_of(pre, words, positionals, options) + ["-n", bad]


def opt_group(c, flag):
    return any(opt[0] == "group" and any(flag in f for f, _ in opt[2]) for opt in c.options)


def run(capsys, argv):
    code = cli.main(argv)
    o, e = capsys.readouterr()
    return code, o, e


@pytest.mark.root
def test_bad_option_values_give_documented_exit_codes(tmp_path, netns_name, capsys,
                                                      monkeypatch):
    monkeypatch.delenv("XDPNN_DEBUG", raising=False)
    seen = 0
    for name, argv in variants(tmp_path, netns_name):
        # A fresh working directory each: a file one variant writes (`--out x`)
        # must not become the model file of the next (`--model x`).
        seen += 1
        cwd = tmp_path / f"cwd{seen}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        code, o, e = run(capsys, argv)
        assert code in DOCUMENTED, (argv, code, o, e)
        assert "Traceback" not in o + e, (argv, o, e)
        if code:
            assert o == "" and len(e.splitlines()) == 1 and e.startswith("xdpnn: "), \
                (argv, o, e)
        code_j, o_j, e_j = run(capsys, ["-j"] + argv)
        assert code_j == code, (argv, code, code_j, o_j, e_j)
        if code:
            assert e_j == "" and json.loads(o_j)["exit_code"] == code, (argv, o_j, e_j)
    assert seen > 400


def test_global_options_before_or_after_the_command(tmp_path, capsys):
    from xdpnn.trainer.model import random_model
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=4).save(path)
    outputs = {run(capsys, argv) for argv in (["-j", "model", "show", str(path)],
                                              ["model", "show", str(path), "-j"],
                                              ["model", "show", "-j", str(path)])}
    assert len(outputs) == 1
    code, o, e = outputs.pop()
    assert code == 0 and json.loads(o)["shape"] == "100-7-3"


@pytest.mark.parametrize("argv,message", [
    (["verify", "--shape", "100-7-3", "--samples", "0"],
     "verify: --samples 0: expected an integer 1..10000000"),
    (["send", "g0", "--port", "70000"], "send: --port 70000: expected an integer 1..65535"),
    (["stats", "b0", "nan", "1"], "stats: interval nan: expected a number 0<x<=86400"),
    (["stats", "b0", "1", "0"], "stats: count 0: expected an integer 1..1000000000"),
    (["send", "g0", "--max-seconds", "-1"], "send: --max-seconds -1: expected a number"),
    (["detach", "../../../../tmp/somedir"], "detach: iface ../../../../tmp/somedir: expected "
                                            "an interface name"),
    (["detach", ".."], "detach: iface ..: expected an interface name"),
    (["-n", "/run/netns/x", "status"], "--netns /run/netns/x: expected a network namespace"),
    (["model", "random", "1-2", "--port", "0", "--out", "x.npz"],
     "model random: --port 0: expected an integer 1..65535"),
])
def test_bad_values_are_named(capsys, argv, message):
    code, o, e = run(capsys, argv)
    assert code == errors.UsageError.exit_code and o == ""
    assert e.startswith(f"xdpnn: {message}"), e


def test_help_lists_every_exit_code(capsys):
    code, o, _ = run(capsys, ["--help"])
    assert code == 0
    for c, meaning in errors.exit_code_list():
        assert f"{c:>3}  {meaning}" in o
    for name, c in cli.COMMANDS.items():
        code, o, _ = run(capsys, name.split() + ["--help"])
        assert code == 0 and "examples:" in o and c.help.split()[0] in o


@pytest.mark.root
@pytest.mark.netns
def test_stats_json_is_the_same_with_j_before_or_after(veth_pair, tmp_path, capsys):
    from xdpnn.trainer.model import random_model
    path = tmp_path / "m.npz"
    random_model([100, 7, 3], seed=4).save(path)
    assert run(capsys, ["-n", veth_pair, "attach", "xv0", "--model", str(path)])[0] == 0
    try:
        outputs = []
        for argv in (["-j", "-n", veth_pair, "stats", "xv0"],
                     ["stats", "xv0", "-j", "-n", veth_pair],
                     ["-n", veth_pair, "stats", "-j", "xv0"]):
            code, o, e = run(capsys, argv)
            assert code == 0, e
            s = json.loads(o)
            del s["time"]
            outputs.append(s)
        assert outputs[0] == outputs[1] == outputs[2]
    finally:
        assert run(capsys, ["-n", veth_pair, "detach", "xv0"])[0] == 0

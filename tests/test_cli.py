"""`vas-proxy generate`: the text on stdout, and one actionable line on stderr for bad input.
Every subcommand's flags: the same as before they came from one source, all in `--help`."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from vas_proxy.options import (GenerateOptions, ServeOptions, UpstreamOptions, add_options,
                               comma_list, from_args, option)
from vas_proxy.upstream.local import free_port

TESTS = Path(__file__).parent


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "vas_proxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_user_error(res, *needles):
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_generate_is_seeded(upstream):
    args = ["generate", "Name a colour.", "--upstream", upstream.base_url, "--model",
            upstream.model, "--chat-template", "chatml", "--value", "h=py:valuefns:char_hash",
            "--beta", "2", "--max-tokens", "8", "--seed", "11", "-q"]
    a, b = cli(*args), cli(*args[:-1])
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()
    assert a.stderr == ""  # -q: nothing but the answer
    # without -q it says what the answer paid: beta 2 moved it off the base
    kl = re.search(r"KL to the base ([\d.e+-]+) nats \(estimate\); \d+ upstream calls", b.stderr)
    assert kl and float(kl.group(1)) > 0, b.stderr


def test_unknown_value_spec():
    assert_user_error(cli("generate", "hi", "--value", "x=nope:thing"), "unknown value spec form")
    assert_user_error(cli("generate", "hi", "--value", "x=py:no_such_module:f"), "cannot import")
    assert_user_error(cli("generate", "hi", "--value", "justaspec"), "NAME=SPEC")


def test_missing_and_mismatched_checkpoint(tmp_path):
    assert_user_error(cli("generate", "hi", "--value", f"x={tmp_path}/absent"), "no such checkpoint")
    (tmp_path / "vas_value.json").write_text(json.dumps({"format": "something-else"}))
    res = cli("generate", "hi", "--value", f"x={tmp_path}")
    assert_user_error(res, str(tmp_path))


def test_unreachable_upstream():
    res = cli("generate", "hi", "--upstream", f"http://127.0.0.1:{free_port()}/v1", "--model",
              "m", "--value", "h=py:valuefns:char_hash")
    assert_user_error(res, "cannot reach upstream")


def test_prompt_longer_than_context(upstream):
    res = cli("generate", "hello " * 4000, "--upstream", upstream.base_url, "--model",
              upstream.model, "--value", "h=py:valuefns:char_hash", "--raw")
    assert_user_error(res, "context length")


class _NoLogprobs(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"choices": [{"text": "x", "index": 0, "logprobs": None,
                                        "finish_reason": "length"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def no_logprobs_upstream():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoLogprobs)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_upstream_without_logprobs(no_logprobs_upstream):
    res = cli("generate", "hi", "--upstream", no_logprobs_upstream, "--model", "m",
              "--value", "h=py:valuefns:char_hash")
    assert_user_error(res, "without logprobs")


def test_bad_flags_exit_2():
    res = cli("generate", "hi", "--top-k", "zero")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert_user_error(cli("generate", "hi", "--top-k", "0", "--value", "h=py:valuefns:char_hash"),
                      "top_k")


# ------------------------------------------------------------------ flags: one source, complete

# Every flag of every subcommand, as the hand-written parsers had it before the options got one
# source (walked from build_parser()): name -> (action, type, default), or "switch" (no value).
# One deliberate change: --timeout of generate and serve was 60 s, now defaults.TIMEOUT (120 s)
# like train and eval (a one-slot server queues requests; the timeout runs while queued).
# Added since (issue 16): --continuation and --embedded of generate and serve, later of eval.
NEW_UPSTREAM = {"--continuation": ("store", str, "auto"), "--embedded": ("store", str, None)}
BEFORE = {
    "generate": {
        "prompt": ("store", str, None), "--upstream": ("store", str, None),
        "--model": ("store", str, None), "--provider": ("store", str, 'llamacpp'),
        "--value": ("append", str, None), "--beta": ("store", float, 1.0),
        "--top-k": ("store", int, 20), "--speculate": ("store", int, 0),
        "--chat-template": ("store", str, None), "--cache-dir": ("store", str, None),
        "--no-cache": "switch", "--device": ("store", str, 'cpu'), "--dtype": ("store", str, None),
        "--timeout": ("store", float, 60.0), "--api-key": ("store", str, None),
        "--max-tokens": ("store", int, 64), "--temperature": ("store", float, 1.0),
        "--top-p": ("store", float, 1.0), "--stop": ("append", str, None),
        "--seed": ("store", int, None), "--raw": "switch", "--quiet/-q": "switch",
        # Best-of-N (bestof_modes): None = not given, as the `vas` fields' rules need
        "--best-of": ("store", int, None), "--best-of-mode": ("store", str, None),
        "--prune-block": ("store", int, None), "--prune-keep": ("store", float, None),
        "--reward": ("store", str, None), **NEW_UPSTREAM,
    },
    "serve": {
        "--upstream": ("store", str, None), "--model": ("store", str, None),
        "--provider": ("store", str, 'llamacpp'), "--value": ("append", str, None),
        "--beta": ("store", float, 1.0), "--top-k": ("store", int, 20),
        "--speculate": ("store", int, 0), "--chat-template": ("store", str, None),
        "--cache-dir": ("store", str, None), "--no-cache": "switch",
        "--device": ("store", str, 'cpu'), "--dtype": ("store", str, None),
        "--timeout": ("store", float, 60.0), "--host": ("store", str, '127.0.0.1'),
        "--port": ("store", int, 8000), "--api-key": ("store", str, None),
        "--upstream-api-key": ("store", str, None), "--log-level": ("store", str, 'info'),
        "--reward": ("append", str, None), **NEW_UPSTREAM,
    },
    "train": {
        "--prompts": ("store", str, None), "--reward": ("store", str, None),
        "--out": ("store", str, None), "--upstream": ("store", str, None),
        "--model": ("store", str, None), "--provider": ("store", str, 'llamacpp'),
        "--chat-template": ("store", str, None), "--timeout": ("store", float, 120.0),
        "--embedded": ("store", str, None),
        "--backbone": ("store", str, 'smollm2'), "--samples-per-prompt": ("store", int, None),
        "--budget": ("store", str, None),
        "--max-tokens": ("store", int, 48), "--no-logprobs": "switch",
        "--concurrency": ("store", int, 4), "--epochs": ("store", int, 6),
        "--min-steps": ("store", int, 384),
        "--lora-r": ("store", int, 16), "--lora-layers": ("store", int, 8),
        "--lr": ("store", float, 0.0005), "--head-lr-mult": ("store", float, 10.0),
        "--standardize": "switch", "--rare-weight": ("store", float, 0.0),
        "--consistency": ("store", float, 0.0), "--consistency-k": ("store", int, 6),
        "--consistency-states": ("store", int, 8), "--branches": ("store", int, 0),
        "--branch-k": ("store", int, 6), "--residual": "switch",
        "--residual-words": "switch",
        "--weight-decay": ("store", float, 0.0), "--batch-size": ("store", int, 8),
        "--grad-accum": ("store", int, 1), "--max-grad-norm": ("store", float, 1.0),
        "--gamma": ("store", float, 1.0), "--lambda": ("store", float, 0.95),
        "--seed": ("store", int, 0), "--heldout-frac": ("store", float, 0.1),
        "--val-completions": ("store", int, 4), "--export": ("store", str, None),
        "--save-every": ("store", int, 0), "--device": ("store", str, 'cpu'),
        "--dtype": ("store", str, None), "--resume": "switch", "--quiet": "switch",
        "--api-key": ("store", str, None),
    },
    "eval": {
        "--prompts": ("store", str, None), "--reward": ("append", str, None),
        "--value": ("append", str, None), "--beta": ("store", str, '0,0.5,1,2,4'),
        "--best-of": ("store", str, '1,4,16'), "--weights": ("append", str, None),
        "--bon-reward": ("store", str, None), "--max-tokens": ("store", int, 32),
        "--top-k": ("store", int, 20), "--speculate": ("store", int, 0),
        "--seed": ("store", int, 0), "--samples": ("store", int, 1),
        "--limit": ("store", int, None), "--concurrency": ("store", int, 2),
        "--out": ("store", str, None), "--resume": "switch", "--upstream": ("store", str, None),
        "--model": ("store", str, None), "--provider": ("store", str, 'llamacpp'),
        "--chat-template": ("store", str, None), "--api-key": ("store", str, None),
        "--timeout": ("store", float, 120.0), "--device": ("store", str, 'cpu'),
        "--dtype": ("store", str, None), "--quiet/-q": "switch", **NEW_UPSTREAM,
    },
    "demo": {
        "--prompt": ("append", str, None), "--prompts": ("store", int, 3),
        "--max-tokens": ("store", int, 32), "--beta": ("store", float, 4.0),
        "--weights": ("store", str, None), "--best-of": ("store", int, 4),
        "--speculate": ("store", int, -1), "--seed": ("store", int, 0),
        "--value": ("store", str, None), "--reward": ("store", str, None),
        "--width": ("store", int, None),
    },
}
for _cmd in ("generate", "serve"):
    BEFORE[_cmd]["--timeout"] = ("store", float, 120.0)
# Deliberate changes of the price-model issue: --speculate defaults to None (the profile's:
# adaptive where drafts are exact); eval answers 64 tokens and gains the Best-of-N modes and
# the price tables.
for _cmd in ("generate", "serve", "eval"):
    BEFORE[_cmd]["--speculate"] = ("store", int, None)
BEFORE["eval"].update({
    "--max-tokens": ("store", int, 64), "--pruned-best-of": ("store", str, ""),
    "--prune-block": ("store", int, 16), "--prune-keep": ("store", float, 0.5),
    "--guided-best-of": ("store", str, ""), "--guided-beta": ("store", float, None),
    "--prices": ("store", str, "flat,out4,out4-prefix,openai")})
# Deliberate changes of the hostile-input issue: the cache may be a Redis URL (`--cache`, an
# alias of --cache-dir) and has a TTL; serve gains the operator's limits and SIGTERM's grace.
for _cmd in ("generate", "serve"):
    BEFORE[_cmd]["--cache-dir/--cache"] = BEFORE[_cmd].pop("--cache-dir")
    BEFORE[_cmd]["--cache-ttl"] = ("store", float, 30 * 24 * 3600.0)
BEFORE["serve"].update({
    "--limit-max-tokens": ("store", int, 4096), "--limit-n": ("store", int, 16),
    "--limit-body-bytes": ("store", int, 4 * 1024 * 1024),
    "--limit-prompt-chars": ("store", int, 200_000), "--limit-generations": ("store", int, 64),
    "--limit-deadline": ("store", float, 600.0), "--shutdown-grace": ("store", float, 15.0)})
# Issue 15 (the RL baselines): serve the embedded model with a tuned LoRA adapter; eval rows
# of tuned models.
for _cmd in ("generate", "serve"):
    BEFORE[_cmd]["--adapter"] = ("store", str, None)
BEFORE["eval"]["--tuned"] = ("append", str, None)
# Issue 13 (value models that know): train on an eval's responses too (an on-policy round).
BEFORE["train"]["--extra-rollouts"] = ("store", str, None)
REQUIRED = {"generate": {"prompt"}, "train": {"--prompts", "--reward", "--out"},
            "eval": {"--prompts", "--reward", "--out"}}
CHOICES = {"--dtype": ["float32", "bfloat16", "float16"],
           "--log-level": ["debug", "info", "warning", "error"],
           "--best-of-mode": ["plain", "pruned", "guided"]}


def _subparsers():
    import argparse

    from vas_proxy.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _flags(parser) -> dict:
    import argparse

    out = {}
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = "/".join(a.option_strings) or a.metavar
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out[name] = "switch"
        else:
            kind = "append" if isinstance(a, argparse._AppendAction) else "store"
            out[name] = (kind, a.type or str, a.default)
        assert a.help and a.help.strip(), f"{name} has no help"
        if a.default is not None and out[name] != "switch":
            assert "(default" in a.help, f"{name}: --help does not say its default"
        assert a.required == (name in REQUIRED.get(parser.prog.split()[-1], set())), name
        if a.option_strings and a.option_strings[0] in CHOICES:
            assert list(a.choices) == CHOICES[a.option_strings[0]], name
    return out


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_flags_are_those_of_before(command):
    assert _flags(_subparsers()[command]) == BEFORE[command]


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_help_mentions_every_flag(command, capsys):
    from vas_proxy.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in BEFORE[command]:
        for flag in name.split("/"):
            assert flag in text, flag


@dataclass
class _Sample:
    """Every kind of field the generator turns into a flag."""

    TITLE = "sample"

    name: str = option(help="positional", positional=True)
    path: str = option(help="required, no default", metavar="FILE")
    count: int = option(3, "an int")
    ratio: float | None = option(None, "an optional float")
    on: bool = option(False, "store_true")
    use_x: bool = option(True, "store_false under a custom name", flag="--no-x")
    tag: list[str] | None = option(None, "repeatable", short="-t")
    mode: str = option("a", "choices", choices=["a", "b"])
    lam: float = option(0.5, "custom name", flag="--lambda")
    sizes: list[int] = option(factory=lambda: [1, 4], help="comma list", show=comma_list,
                              parse=lambda text: [int(x) for x in text.split(",")])
    pairs: dict[str, str] = option(factory=dict, help="NAME=V, repeatable", repeat=True,
                                   parse=lambda items: dict(i.split("=") for i in items or []))


def _sample_parser():
    import argparse

    p = argparse.ArgumentParser(prog="sample")
    add_options(p, _Sample)
    return p


def test_option_generator():
    p = _sample_parser()
    got = from_args(_Sample, p.parse_args(["n", "--path", "f"]))
    assert got == _Sample(name="n", path="f")  # the flags' defaults are the dataclass's
    got = from_args(_Sample, p.parse_args(
        ["n", "--path", "f", "--count", "5", "--ratio", "0.5", "--on", "--no-x", "-t", "a",
         "--tag", "b", "--mode", "b", "--lambda", "0.25", "--sizes", "2,3", "--pairs", "k=v"]))
    assert got == _Sample(name="n", path="f", count=5, ratio=0.5, on=True, use_x=False,
                          tag=["a", "b"], mode="b", lam=0.25, sizes=[2, 3], pairs={"k": "v"})
    text = p.format_help()
    for needle in ("sample:", "--count COUNT", "an int (default: 3)", "(default: 1,4)",
                   "--mode {a,b}", "--lambda LAM", "--no-x", "-t TAG", "--path FILE"):
        assert needle in text, needle
    assert "optional float (default" not in text and "store_true (default" not in text


@pytest.mark.parametrize("argv", [["n"], ["n", "--path", "f", "--count", "x"],
                                  ["n", "--path", "f", "--mode", "c"]])
def test_option_generator_rejects_bad_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _sample_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_flag_defaults_are_the_dataclass_defaults(monkeypatch):
    """One default per option, from vas_proxy.defaults: what a flag-less command line parses to
    is what the dataclasses default to, and the upstream timeout is one number everywhere."""
    from vas_proxy import defaults
    from vas_proxy.cli import build_parser, runtime_options
    from vas_proxy.demo import DemoOptions
    from vas_proxy.eval.config import EvalConfig
    from vas_proxy.runtime import Options
    from vas_proxy.train.config import TrainConfig

    monkeypatch.delenv("VAS_UPSTREAM_API_KEY", raising=False)
    monkeypatch.delenv("VAS_PROXY_API_KEY", raising=False)
    p = build_parser()
    for command in ("generate", "serve"):
        a = p.parse_args([command] + (["hi"] if command == "generate" else []))
        assert runtime_options(a) == Options()
        assert Options().upstream.timeout == defaults.TIMEOUT
        assert Options().guidance.beta == defaults.BETA
        assert Options().guidance.top_k == defaults.TOP_K
    assert from_args(ServeOptions, p.parse_args(["serve"])) == ServeOptions()
    assert from_args(GenerateOptions, p.parse_args(["generate", "hi"])) == GenerateOptions("hi")
    assert from_args(DemoOptions, p.parse_args(["demo"])) == DemoOptions()

    train = from_args(TrainConfig, p.parse_args(["train", "--prompts", "p", "--reward", "r",
                                                 "--out", "o"]))
    assert train == TrainConfig(prompts="p", reward="r", out="o")
    assert train.timeout == defaults.TIMEOUT
    evaluation = from_args(EvalConfig, p.parse_args(["eval", "--prompts", "p", "--reward", "r",
                                                     "--out", "o"]))
    # the one difference: without --value the command uses the bundled demo model
    assert evaluation == EvalConfig(prompts="p", rewards={"r": "r"}, out="o",
                                    values=Options().guidance.values)
    assert evaluation.timeout == defaults.TIMEOUT


def test_keys_come_from_flags_or_env(monkeypatch):
    from vas_proxy.cli import build_parser

    p = build_parser()
    monkeypatch.setenv("VAS_UPSTREAM_API_KEY", "from-env")
    monkeypatch.setenv("VAS_PROXY_API_KEY", "proxy-env")
    for argv in (["generate", "hi"], ["serve"], ["eval", "--prompts", "p", "--reward", "r",
                                                  "--out", "o"],
                 ["train", "--prompts", "p", "--reward", "r", "--out", "o"]):
        assert from_args(UpstreamOptions, p.parse_args(argv)).api_key == "from-env"
    assert from_args(ServeOptions, p.parse_args(["serve"])).api_key == "proxy-env"
    a = p.parse_args(["serve", "--api-key", "mine", "--upstream-api-key", "theirs"])
    assert from_args(ServeOptions, a).api_key == "mine"
    assert from_args(UpstreamOptions, a).api_key == "theirs"
    a = p.parse_args(["generate", "hi", "--api-key", "k"])
    assert from_args(UpstreamOptions, a).api_key == "k"
    assert "theirs" not in repr(from_args(UpstreamOptions, a))  # keys stay out of reprs


@pytest.mark.parametrize("argv", [
    ["generate", "hi", "--max-tok", "5"],
    ["train", "--prompts", "p", "--reward", "r", "--out", "o", "--samples-per", "4"],
    ["baseline", "rl", "--method", "dpo", "--out", "o", "--warm", "3"],  # a nested subcommand
])
def test_an_abbreviated_flag_is_refused_not_guessed(argv, capsys):
    from vas_proxy.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-2]}" in capsys.readouterr().err

"""deploy/compose.yaml and its nginx.conf stay true to the CLI: the proxy's command parses with
`vas-proxy serve`'s own parser into valid option groups, and the balancer's body and read limits
are serve's defaults (one source). Docker itself is not run here."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vas_proxy import defaults
from vas_proxy.cli import build_parser
from vas_proxy.options import (CacheOptions, LimitOptions, ServeOptions, UpstreamOptions,
                               ValueLoadOptions)
from vas_proxy.options.flags import from_args

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_compose_proxy_command_is_a_valid_serve_command():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    proxy = compose["services"]["proxy"]
    args = build_parser().parse_args(proxy["command"])
    srv, cache = from_args(ServeOptions, args), from_args(CacheOptions, args)
    assert args.command == "serve" and srv.host == "0.0.0.0"
    assert cache.cache_dir.startswith("redis://redis:")  # the shared cache, not a local dir
    upstream = from_args(UpstreamOptions, args)
    assert upstream.url.startswith("http://upstream:") and "upstream" in compose["services"]
    assert from_args(ValueLoadOptions, args).device == "cuda"
    limits = from_args(LimitOptions, args)  # validates the values, as serve does
    assert proxy["deploy"]["replicas"] >= 2
    grace = int(proxy["stop_grace_period"].rstrip("s"))
    assert grace > limits.grace  # docker's SIGKILL comes after serve's own drain
    assert "VAS_PROXY_API_KEY" in proxy["environment"]  # non-loopback needs a key


def test_nginx_limits_are_serves_defaults():
    conf = (DEPLOY / "nginx.conf").read_text()
    body = re.search(r"client_max_body_size (\d+)m;", conf)
    assert int(body.group(1)) * 2**20 == defaults.LIMIT_BODY_BYTES
    read = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert float(read.group(1)) == defaults.LIMIT_DEADLINE
    assert "proxy_buffering off" in conf  # SSE streams must not be held back

"""Schemathesis against the app's own OpenAPI document: generated bodies, valid (positive) and
invalid (negative), for every operation. Not one may be answered 5xx: the upstream here is a
fake that always answers, so any 5xx would be ours. Every answer must also match the document
(status codes it lists, content types, the error envelope). Small limits keep the generated
requests cheap (a valid `max_tokens: 4096` would otherwise be 4,096 upstream calls)."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from vas_proxy.options import LimitOptions

from test_hostile import AUTH, make_app

EXAMPLES = int(os.environ.get("VAS_FUZZ_EXAMPLES", "60"))  # per operation and mode (reliability.py: 500)

# Any model name is passed through (as `wrap` does), so that valid bodies are answered 200
APP = make_app(limits=LimitOptions(max_tokens=16, prompt_chars=2000, n=2, generations=8),
               passthrough_models=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, headers=AUTH)
schema.config.generation.update(modes=list(GenerationMode), max_examples=EXAMPLES,
                                deterministic=True)


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_answers_match_the_document(case):
    response = case.call(headers=AUTH)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        err = response.json()["error"]
        assert set(err) >= {"message", "type", "param", "code"}, response.text


def test_the_fuzzing_reached_the_generation_endpoints():
    """Runs after the fuzzing (file order): both POST routes were called, valid bodies were
    answered 200 and invalid ones 400, so the run above was not vacuous."""
    text = APP.state.serving.metrics.render()[0].decode()
    for path in ("/v1/completions", "/v1/chat/completions"):
        for status in ("200", "400"):
            line = f'vas_proxy_requests_total{{path="{path}",status="{status}"}}'
            assert any(x.startswith(line) and float(x.split()[-1]) >= 5
                       for x in text.splitlines()), (path, status)

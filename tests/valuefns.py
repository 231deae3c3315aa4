"""Value callables for tests (loaded through `py:valuefns:NAME` specs)."""


def char_hash(prompt: str, continuations: list[str]) -> list[float]:
    """Deterministic, strongly varying values: enough tilt that a wrong target is detectable."""
    return [((sum(map(ord, c[-4:])) * 2654435761) % 1000) / 250.0 for c in continuations]


def wrong_length(prompt: str, continuations: list[str]) -> list[float]:
    return [1.0, 2.0]


def char_prob(prompt: str, continuations: list[str]) -> list[float]:
    """`char_hash` as a probability in [0, 1): the value of a 0/1 reward (`binary:` specs)."""
    return [v / 4.0 for v in char_hash(prompt, continuations)]

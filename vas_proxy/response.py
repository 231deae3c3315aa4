"""The text of a response as its tokens arrive: UTF-8-safe (a token may be part of a
character), cut at the first stop string, and emitted with a hold-back so a stop string is never
half-sent (docs/design.md §5)."""

from __future__ import annotations

import codecs


class ResponseText:
    """UTF-8-safe accumulation of token bytes, with stop-string detection and hold-back."""

    def __init__(self, stop: list[str]):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text = ""
        self.stop = [s for s in stop if s]
        self._emitted = 0
        self.ids: list[int] = []  # the tokens' own ids, where the upstream reports them

    def append(self, raw: bytes, token_id: int | None = None) -> bool:
        """Add a token; True when a stop string now occurs (text is cut before it)."""
        if token_id is not None:
            self.ids.append(token_id)
        self.text += self._decoder.decode(raw)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            return True
        return False

    def preview(self, raws: list[bytes]) -> list[str]:
        """The text after appending raws[:1], raws[:2], ... (this response unchanged), cut at
        the first one that completes a stop string: what the response would be at each drafted
        position if every earlier draft were accepted."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        decoder.setstate(self._decoder.getstate())
        text, out = self.text, []
        for raw in raws:
            text += decoder.decode(raw)
            if any(s in text for s in self.stop):
                break
            out.append(text)
        return out

    def flush(self, final: bool) -> str:
        """Text safe to emit now: hold back a tail that could still grow into a stop string."""
        end = len(self.text)
        if not final:
            for s in self.stop:
                for n in range(min(len(s) - 1, end), 0, -1):
                    if self.text.endswith(s[:n]):
                        end = min(end, len(self.text) - n)
                        break
        end = max(end, self._emitted)
        out, self._emitted = self.text[self._emitted:end], end
        return out

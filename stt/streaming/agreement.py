"""LocalAgreement: partial hypotheses stabilized by committing what two agree on.

Each new hypothesis of a growing utterance is compared with the previous one; the
words both begin with are committed. Committed words are forced as the decoder's
prefix from then on and never revised within the utterance.

A caller may hold back words the decoder was unsure of (flush's `limit`). Three
hypotheses in a row that begin alike may commit more (`three_agree_limit`): the caller
lets them past an unsure first word of the utterance, since tiny.en is rarely sure of a
sentence's first word ("And Mr. John Dashwood ...": 0.2-0.5) and that one word held back
every word of a 7 s sentence. Not past an unsure word further on: that is where a name
the greedy partials misspell three times ("Shivor" for the keyterm "Siobhan") would be
forced on the final, which would otherwise spell it from the keyterms.
"""

from __future__ import annotations

from typing import Sequence

from stt.engine import Piece, Word
from stt.evaluation import normalize_text

# Committed words forced on the decoder are capped (Whisper's prompt limit is 223).
MAX_PREFIX_TOKENS = 180


class LocalAgreement:
    """The committed and tentative words of one utterance's partials.

    insert() takes a hypothesis, flush() commits what it shares with the previous
    one and returns the newly committed words, complete() is the uncommitted rest.
    """

    def __init__(self) -> None:
        self.committed: list[Piece] = []
        self.tentative: list[Piece] = []  # the last hypothesis beyond `committed`
        self.earlier: list[Piece] = []  # the one before it, beyond `committed`
        self._new: list[Piece] = []  # the inserted hypothesis beyond `committed`, not yet flushed

    @property
    def prefix_tokens(self) -> tuple[int, ...]:
        """The committed words as tokens to force as the decoder's prefix; none when
        they are too many for Whisper's prompt."""
        tokens = tuple(t for piece in self.committed for t in piece.tokens)
        return tokens if len(tokens) <= MAX_PREFIX_TOKENS else ()

    def insert(self, pieces: tuple[Piece, ...], forced_prefix: bool) -> None:
        """Take a hypothesis: only the continuation of the committed words when they
        were forced as the decoder's prefix, else the whole of it (whose start must
        then match them)."""
        if forced_prefix:
            self._new = list(pieces)
            return
        committed = len(self.committed)
        # When the prefix was too long to force and the model strayed, the committed
        # words stay; the rest of this hypothesis shows as it is.
        self._new = list(pieces[committed:])

    def flush(self, limit: int | None = None, three_agree_limit: int | None = None) -> list[Piece]:
        """Commit the words the inserted hypothesis begins with in agreement with the
        previous one: at most `limit` of them, or where the one before agreed too, at
        most `three_agree_limit` (None: no more than they agree on); returns them."""
        agreed = _agreed(self.tentative, self._new)
        if limit is not None:
            three = _agreed(self.earlier, self.tentative, self._new)
            if three_agree_limit is not None:
                three = min(three, three_agree_limit)
            agreed = min(agreed, max(limit, three))
        newly_committed = self._new[:agreed]
        self.committed.extend(newly_committed)
        # The previous hypothesis began with the committed words too: what follows them.
        self.earlier, self.tentative, self._new = self.tentative[agreed:], self._new[agreed:], []
        return newly_committed

    def complete(self) -> list[Piece]:
        """The words of the last hypothesis not committed (yet)."""
        return list(self.tentative)

    @property
    def stable_text(self) -> str:
        return "".join(p.text for p in self.committed).strip()

    @property
    def unstable_text(self) -> str:
        return "".join(p.text for p in self.tentative).strip()

    @property
    def shown_unstable_text(self) -> str:
        """The uncommitted words to show: all but the last, which is usually cut off by
        the end of the audio and taken back by the next hypothesis; the last one too
        when it is the only word there is to show."""
        tentative = self.tentative
        if len(tentative) >= 2:
            shown = tentative[:-1]
        else:
            shown = tentative if not self.committed else []
        return "".join(p.text for p in shown).strip()

    def update(self, pieces: tuple[Piece, ...], forced_prefix: bool, commit: bool = True,
               limit: int | None = None, three_agree_limit: int | None = None) -> tuple[str, str]:
        """insert() then flush(limit, three_agree_limit) (only a look at the hypothesis
        when `commit` is False: the committed words are frozen while the final is decoded
        on them); returns (stable text, unstable text)."""
        self.insert(pieces, forced_prefix)
        if commit:
            self.flush(limit, three_agree_limit)
        else:
            self.earlier, self.tentative, self._new = self.tentative, self._new, []
        return self.stable_text, self.unstable_text


def sure_pieces(pieces: Sequence[Piece], words: Sequence[Word], committed: Sequence[Piece],
                min_probability: float, first_exempt: bool = False) -> int | None:
    """How many of a hypothesis's new pieces (after the committed ones) begin it with
    every word aligned at `min_probability` or more (`first_exempt`: the first new piece
    counts as sure whatever its probability); None when the aligned words do not match
    the pieces word for word (then nothing limits the commit)."""
    probabilities = [w.probability for w in words for _ in normalize_text(w.word)]
    counts = [len(normalize_text(p.text)) for p in pieces]
    offset = sum(len(normalize_text(p.text)) for p in committed)
    if len(probabilities) != offset + sum(counts):
        return None
    sure = 0
    for index, count in enumerate(counts):
        span = probabilities[offset:offset + count]
        if any(p < min_probability for p in span) and not (first_exempt and index == 0):
            break
        offset += count
        sure += 1
    return sure


def keep_committed(committed: str, final_text: str) -> str:
    """The final's text starting with the committed words. A final decoded with them as
    its forced prefix already does; one decoded without (too long to force, or redone
    the long way) has its first words replaced by them, as many as were committed."""
    committed_words, final_words = committed.split(), final_text.split()
    if not committed_words or _norm(" ".join(final_words[:len(committed_words)])) == _norm(committed):
        return final_text
    return " ".join(committed_words + final_words[len(committed_words):])


def _agreed(*hypotheses: Sequence[Piece]) -> int:
    """How many words every hypothesis begins with alike (case and punctuation aside)."""
    count = 0
    for words in zip(*hypotheses):
        spelled = {_norm(word.text) for word in words}
        if len(spelled) != 1 or not spelled.pop():
            break
        count += 1
    return count


def _norm(text: str) -> str:
    return " ".join(normalize_text(text))

"""Byte-level tokenizer: 256 byte tokens plus a few specials, so nothing is ever downloaded.

Also the chat template the ingress applies to `/v1/chat/completions` messages (plain text over
the byte tokens, no special tokens besides the leading BOS)::

    <|system|>\nYou are terse.\n<|user|>\nHi\n<|assistant|>\n

one `<|role|>\ncontent\n` block per message, in order, then `<|assistant|>\n` for the reply.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

BYTE_VOCAB = 256
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259
SPECIAL_TOKENS = {"<bos>": BOS_ID, "<eos>": EOS_ID, "<pad>": PAD_ID}
_SPECIAL_NAMES = {v: k for k, v in SPECIAL_TOKENS.items()}


def apply_chat_template(messages: Iterable[tuple[str, str]]) -> str:
    """The prompt for (role, content) messages: `<|role|>\ncontent\n` each, then
    `<|assistant|>\n` (the generation prompt). Encode it with `add_bos=True`."""
    parts = [f"<|{role}|>\n{content}\n" for role, content in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)


def token_text(token: int) -> str:
    """A token as a display string (logprobs): its character for ASCII bytes, `bytes:\\xNN`
    for bytes that are part of a multi-byte character (vLLM's convention), `<eos>` etc. for
    specials."""
    if 0 <= token < 128:
        return chr(token)
    if 0 <= token < BYTE_VOCAB:
        return f"bytes:\\x{token:02x}"
    return _SPECIAL_NAMES.get(token, f"<{token}>")


def token_bytes(token: int) -> list[int]:
    """The UTF-8 bytes of a token (chat logprobs' `bytes`); specials have none."""
    return [token] if 0 <= token < BYTE_VOCAB else []


class ByteTokenizer:
    """UTF-8 bytes are the tokens; ids >= 256 are specials and decode to no text."""

    vocab_size = VOCAB_SIZE
    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`; `add_bos` prepends BOS so even "" yields a non-empty prompt."""
        ids = list(text.encode("utf-8"))
        return [BOS_ID, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping specials; invalid or truncated UTF-8 becomes U+FFFD."""
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")


class IncrementalDecoder:
    """Streams text token by token without splitting multi-byte UTF-8 characters."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """New text made complete by `token` (often "" mid-character or for specials)."""
        if not 0 <= token < BYTE_VOCAB:
            return ""
        return self._dec.decode(bytes((token,)))

    def flush(self) -> str:
        """Pending bytes of an unfinished character, as U+FFFD (call once at the end)."""
        return self._dec.decode(b"", final=True)

"""Chat templates: how a conversation becomes the one long text an instruct model was trained on.

An instruct model has only ever seen conversations in one exact layout, marked with special
tokens; anything else (a missing newline, an extra space after the assistant header) measurably
hurts its answers. Three layouts cover the models here:

llama3 (Meta's ChatFormat in llama3 ``tokenizer.py``)::

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nBe brief.<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\nHi!<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n          <- the model writes from here

    (no line breaks between turns; each content is stripped; nothing after the final "\\n\\n")

llama2 (Meta's ``chat_completion`` in llama ``generation.py``)::

    <s>[INST] <<SYS>>\\nBe brief.\\n<</SYS>>\\n\\nHi! [/INST] Hello! </s><s>[INST] Again? [/INST]

    <s> and </s> are BOS/EOS *tokens*: every user/assistant exchange is encoded on its own with
    BOS in front and EOS after the answer. The system prompt goes inside the first [INST].

chatml (SmolLM2's template, from its GGUF ``tokenizer.chat_template``)::

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\nHi!<|im_end|>\\n<|im_start|>assistant\\n

    SmolLM2 adds that default system prompt when the conversation has none; content is not stripped.

``apply_chat_template`` returns the text (as transformers' ``apply_chat_template(tokenize=False)``
does); ``encode_chat`` returns the ids, with the markers as special tokens and the message
contents always encoded as plain text, so a user who types "<|eot_id|>" can't end a turn
(Meta's code does the same; transformers would turn it into the special token).
"""
from __future__ import annotations

from .base import TokenizerError

FORMATS = ("llama3", "llama2", "chatml")
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def apply_chat_template(messages, fmt: str, add_generation_prompt: bool = True, **options) -> str:
    """messages: [{"role": "system"|"user"|"assistant", "content": str}, ...] -> prompt text.

    ``add_generation_prompt`` ends the text with the opening of an assistant turn, so the model
    answers. For llama2 the prompt always ends with "[/INST]", which is that cue already.
    ``options``: ``default_system`` for chatml (None: SmolLM2's; "" for none).
    """
    return "".join(text for text, _ in chat_segments(messages, fmt, add_generation_prompt, **options))


def encode_chat(tokenizer, messages, add_generation_prompt: bool = True, fmt: str | None = None,
                **options) -> list[int]:
    """The token ids of a conversation, in ``tokenizer.chat_format`` unless ``fmt`` says otherwise."""
    fmt = fmt or tokenizer.chat_format
    ids: list[int] = []
    for text, special in chat_segments(messages, fmt, add_generation_prompt, **options):
        if special:
            i = tokenizer.special_tokens.get(text)
            if i is None:
                raise TokenizerError(f"chat format {fmt!r} needs the special token {text!r}, "
                                     f"which this tokenizer does not have")
            ids.append(i)
        else:
            ids += tokenizer.encode(text)  # plain text: special-token strings stay text
    return ids


def chat_segments(messages, fmt: str, add_generation_prompt: bool = True,
                  **options) -> list[tuple[str, bool]]:
    """The conversation as (text, is_special_token) pieces; joining the texts gives the prompt."""
    messages = _check(messages)
    if fmt == "llama3":
        return _llama3(messages, add_generation_prompt)
    if fmt == "llama2":
        return _llama2(messages, add_generation_prompt)
    if fmt == "chatml":
        return _chatml(messages, add_generation_prompt, options.get("default_system"))
    raise ValueError(f"unknown chat format {fmt!r} (choose from {', '.join(FORMATS)})")


def _check(messages) -> list[dict]:
    if isinstance(messages, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError('messages must be a list of {"role": str, "content": str} dicts')
    return list(messages)


def _llama3(messages, add_generation_prompt):
    out = [("<|begin_of_text|>", True)]
    for m in messages:
        out += _llama3_header(m["role"]) + [(m["content"].strip(), False), ("<|eot_id|>", True)]
    if add_generation_prompt:
        out += _llama3_header("assistant")  # ends with "\n\n": the answer starts right after
    return [s for s in out if s[0]]


def _llama3_header(role):
    return [("<|start_header_id|>", True), (role, False), ("<|end_header_id|>", True), ("\n\n", False)]


B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def _llama2(messages, add_generation_prompt):
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2:
            raise ValueError("llama2 chat: a system message must be followed by a user message")
        # Meta folds the system prompt into the first user message
        content = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
        first = {"role": messages[1]["role"], "content": content}
        messages = [first] + messages[2:]
    for k, m in enumerate(messages):
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ValueError(f"llama2 chat: roles must be (system), user, assistant, user, ...; "
                             f"message {k} is {m['role']!r}")
    if add_generation_prompt and (not messages or messages[-1]["role"] != "user"):
        raise ValueError("llama2 chat: the last message must be from the user for the model to answer")
    out = []
    for k in range(0, len(messages), 2):
        text = f"{B_INST} {messages[k]['content'].strip()} {E_INST}"
        if k + 1 < len(messages):  # a finished exchange: answer, then EOS
            answer = messages[k + 1]["content"].strip()
            out += [("<s>", True), (f"{text} {answer} ", False), ("</s>", True)]
        else:
            out += [("<s>", True), (text, False)]
    return out


def _chatml(messages, add_generation_prompt, default_system=None):
    default_system = SMOLLM2_DEFAULT_SYSTEM if default_system is None else default_system
    if messages and messages[0]["role"] != "system" and default_system:
        messages = [{"role": "system", "content": default_system}] + messages
    out = []
    for m in messages:
        out += [("<|im_start|>", True), (f"{m['role']}\n{m['content']}", False),
                ("<|im_end|>", True), ("\n", False)]
    if add_generation_prompt:
        out += [("<|im_start|>", True), ("assistant\n", False)]
    return out

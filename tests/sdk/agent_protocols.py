#!/usr/bin/env python3
"""The official `openai` (Responses API) and `anthropic` (Messages API) Python SDKs against a
running tollgate: `POST /v1/responses` plain, streamed (raw events and the `responses.stream`
helper), with forced function calls and their follow-ups (stateless and by
`previous_response_id`), stored chains (`retrieve`, `input_items.list`, `delete`, `store=False`),
`json_schema` / `json_object` text formats; `POST /v1/messages` plain, streamed (raw events and the
`messages.stream` helper), with forced tool use and a `tool_result` follow-up,
`/v1/messages/count_tokens`, and the Anthropic error shapes.

Both clients validate every response and stream event against the SDK's pydantic models
(`_strict_response_validation=True`), so a missing required field fails here rather than in a
user's program (set TOLLGATE_SDK_LENIENT=1 to parse the SDKs' lenient way instead).

The test model is a weak base model: every check asserts validity (shapes, schemas, streams
that reassemble, what greedy decoding implies), never quality. Only the base URL is used, so the
same checks run against a tollgate that translates to an openai-kind upstream.

    agent_protocols.py BASE_URL CHECK...   runs the named checks
    agent_protocols.py BASE_URL            runs them all
    (the API key: --key=KEY or TOLLGATE_TEST_KEY, default "unused")
"""

import json
import os
import sys
import traceback
import typing

import anthropic
import jsonschema
import openai
from pydantic import BaseModel, Field

KEY = os.environ.get("TOLLGATE_TEST_KEY", "unused")
STRICT = os.environ.get("TOLLGATE_SDK_LENIENT") != "1"
# Set when the gateway serves the engine itself, which counts a prompt before it streams.
COUNTS_FIRST = os.environ.get("TOLLGATE_TEST_COUNTS_FIRST") == "1"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city, e.g. Paris", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_SCHEMA = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "Europe/Paris", "America/New_York"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
# The Responses tool shape (flat, unlike chat's {"type": "function", "function": {...}}).
R_TOOLS = [
    {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
     "parameters": WEATHER_SCHEMA, "strict": True},
    {"type": "function", "name": "get_time", "description": "The current time in a time zone.",
     "parameters": TIME_SCHEMA, "strict": True},
]
# The Anthropic tool shape.
A_TOOLS = [
    {"name": "get_weather", "description": "The current weather in a city.", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "description": "The current time in a time zone.", "input_schema": TIME_SCHEMA},
]
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
RESULT = json.dumps({"temperature": 21, "sky": "clear"})
FORCE_R = {"type": "function", "name": "get_weather"}
FORCE_A = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
DELTA = "response.output_text.delta"
ARGS_DELTA = "response.function_call_arguments.delta"


def oai(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120,
                         _strict_response_validation=STRICT)


def ant(base):
    # Anthropic's base URL has no /v1: the SDK's paths carry it.
    return anthropic.Anthropic(base_url=base, api_key=KEY, max_retries=0, timeout=120,
                               _strict_response_validation=STRICT)


MODEL = {}


def model_id(base):
    if base not in MODEL:
        MODEL[base] = oai(base).models.list().data[0].id
    return MODEL[base]


def collapse(types, repeated):
    """The event types with each run of a repeated (delta) type reduced to one."""
    return [t for i, t in enumerate(types) if not (t in repeated and i and types[i - 1] == t)]


def messages_of(response):
    return [o for o in response.output if o.type == "message"]


def check_usage(u):
    assert u is not None, "no usage"
    assert u.input_tokens > 0 and u.output_tokens > 0, u
    assert u.total_tokens == u.input_tokens + u.output_tokens, u
    assert isinstance(u.input_tokens_details.cached_tokens, int), u
    assert isinstance(u.output_tokens_details.reasoning_tokens, int), u


def check_text_response(r, max_tokens):
    assert r.object == "response", r.object
    assert r.id and isinstance(r.created_at, (int, float)), r
    assert r.status in ("completed", "incomplete"), r.status
    if r.status == "incomplete":
        assert r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
    else:
        assert r.incomplete_details is None, r.incomplete_details
    assert r.error is None, r.error
    assert isinstance(r.output_text, str)
    msgs = messages_of(r)
    assert len(msgs) == 1, r.output
    m = msgs[0]
    assert m.id and m.role == "assistant" and m.status in ("completed", "incomplete"), m
    assert [p.type for p in m.content] == ["output_text"], m.content
    assert m.content[0].annotations == [], m.content[0]
    assert m.content[0].text == r.output_text
    check_usage(r.usage)
    assert r.usage.output_tokens <= max_tokens, r.usage


# --- the Responses API -----------------------------------------------------------------------


def responses_plain(base):
    c, m = oai(base), model_id(base)
    prompt = "The capital of France is"
    r = c.responses.create(model=m, input=prompt, max_output_tokens=16, temperature=0)
    check_text_response(r, 16)
    assert r.previous_response_id is None
    # The same input as a message with input_text parts: the same prompt, the same greedy answer.
    parts = [{"role": "user", "content": [{"type": "input_text", "text": prompt}]}]
    r2 = c.responses.create(model=m, input=parts, max_output_tokens=16, temperature=0)
    assert r2.usage.input_tokens == r.usage.input_tokens, (r2.usage, r.usage)
    # Instructions are part of the prompt.
    r3 = c.responses.create(model=m, input=prompt, instructions="You answer in one word.",
                            max_output_tokens=16, temperature=0)
    check_text_response(r3, 16)
    assert r3.usage.input_tokens > r.usage.input_tokens, (r3.usage, r.usage)


def responses_stream(base):
    c, m = oai(base), model_id(base)
    kw = dict(model=m, input="Once upon a time", max_output_tokens=16, temperature=0)
    events = list(c.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    seq = [e.sequence_number for e in events]
    assert seq[0] == 0 and all(a < b for a, b in zip(seq, seq[1:])), seq
    final = types[-1]
    assert final in ("response.completed", "response.incomplete"), types
    assert collapse(types, {DELTA}) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", DELTA, "response.output_text.done",
        "response.content_part.done", "response.output_item.done", final,
    ], types
    created, added, part, done, part_done, item_done, last = (
        events[0], events[2], events[3], events[-4], events[-3], events[-2], events[-1])
    rid = created.response.id
    assert created.response.status == "in_progress" and created.response.output == [], created
    assert events[1].response.id == rid and last.response.id == rid
    assert added.item.type == "message" and added.item.status == "in_progress", added.item
    assert added.item.content == [] and added.output_index == 0, added
    iid = added.item.id
    assert part.item_id == iid and part.content_index == 0 and part.part.text == "", part
    deltas = [e for e in events if e.type == DELTA]
    for d in deltas:
        assert (d.item_id, d.output_index, d.content_index) == (iid, 0, 0), d
        assert isinstance(d.logprobs, list), d
    text = "".join(d.delta for d in deltas)
    assert done.text == text and done.item_id == iid, (done.text, text)
    assert part_done.part.text == text, part_done
    assert item_done.item.id == iid and item_done.item.content[0].text == text, item_done
    assert item_done.item.status in ("completed", "incomplete"), item_done.item
    assert last.response.output_text == text, (last.response.output_text, text)
    check_text_response(last.response, 16)
    # Greedy: the unstreamed answer is the same.
    whole = c.responses.create(**kw)
    assert whole.output_text == text, (whole.output_text, text)
    # The accumulating helper. It returns a final response only after `response.completed`,
    # so a small enum schema makes the answer end within the limit.
    fmt = {"format": {"type": "json_schema", "name": "answer", "strict": True, "schema": {
        "type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"], "additionalProperties": False}}}
    with c.responses.stream(model=m, input="Is the sky blue? Answer as JSON.", text=fmt,
                            max_output_tokens=24, temperature=0) as s:
        got = [e for e in s]
        helper_text = "".join(e.delta for e in got if e.type == DELTA)
        snapshots = [e.snapshot for e in got if e.type == DELTA]
        final_response = s.get_final_response()
    assert got[-1].type == "response.completed", [e.type for e in got]
    assert snapshots and snapshots[-1] == helper_text, (snapshots, helper_text)
    assert final_response.output_text == helper_text, (final_response.output_text, helper_text)
    assert json.loads(helper_text)["answer"] in ("yes", "no"), helper_text


def function_calls(r):
    return [o for o in r.output if o.type == "function_call"]


def check_call(call, name="get_weather"):
    assert call.type == "function_call" and call.call_id and call.name == name, call
    assert call.status in (None, "completed"), call
    args = json.loads(call.arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def responses_tool(base):
    c, m = oai(base), model_id(base)
    r = c.responses.create(model=m, input=ASK, tools=R_TOOLS, tool_choice=FORCE_R, parallel_tool_calls=False,
                           max_output_tokens=64, temperature=0)
    assert r.status == "completed", (r.status, r.incomplete_details)
    calls = function_calls(r)
    assert len(calls) == 1 and not messages_of(r), r.output
    call = calls[0]
    check_call(call)
    assert r.tools and r.tools[0].name == "get_weather", r.tools
    output = {"type": "function_call_output", "call_id": call.call_id, "output": RESULT}
    # Stateless: the whole history, the call item as the SDK returned it.
    r2 = c.responses.create(model=m, input=ASK + [call, output], tools=R_TOOLS, tool_choice="none",
                            max_output_tokens=16, temperature=0, store=False)
    check_text_response(r2, 16)
    assert not function_calls(r2), r2.output
    # Against the question alone with the same tool choice (with "none" a template may leave the
    # tools out of the prompt): the call and its result are part of the prompt.
    r0 = c.responses.create(model=m, input=ASK, tools=R_TOOLS, tool_choice="none", max_output_tokens=16,
                            temperature=0, store=False)
    assert r2.usage.input_tokens > r0.usage.input_tokens, (r2.usage, r0.usage)
    # Stateful: the stored call, the result alone; the same prompt, so the same greedy answer.
    r3 = c.responses.create(model=m, previous_response_id=r.id, input=[output], tools=R_TOOLS,
                            tool_choice="none", max_output_tokens=16, temperature=0)
    check_text_response(r3, 16)
    assert r3.previous_response_id == r.id, r3.previous_response_id
    assert r3.usage.input_tokens == r2.usage.input_tokens, (r3.usage, r2.usage)


def responses_tool_stream(base):
    c, m = oai(base), model_id(base)
    kw = dict(model=m, input=ASK, tools=R_TOOLS, tool_choice=FORCE_R, parallel_tool_calls=False,
              max_output_tokens=64, temperature=0)
    events = list(c.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert collapse(types, {ARGS_DELTA}) == [
        "response.created", "response.in_progress", "response.output_item.added", ARGS_DELTA,
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ], types
    seq = [e.sequence_number for e in events]
    assert seq[0] == 0 and all(a < b for a, b in zip(seq, seq[1:])), seq
    added, done, item_done, last = events[2], events[-3], events[-2], events[-1]
    item = added.item
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id, item
    assert item.arguments == "" and item.status == "in_progress", item
    deltas = [e for e in events if e.type == ARGS_DELTA]
    assert all(d.item_id == item.id and d.output_index == 0 for d in deltas), deltas
    arguments = "".join(d.delta for d in deltas)
    assert done.arguments == arguments and done.item_id == item.id, (done.arguments, arguments)
    assert item_done.item.arguments == arguments and item_done.item.call_id == item.call_id, item_done.item
    jsonschema.validate(json.loads(arguments), WEATHER_SCHEMA)
    (call,) = function_calls(last.response)
    assert call.arguments == arguments and call.call_id == item.call_id, call
    # Greedy: the same call unstreamed.
    (whole,) = function_calls(c.responses.create(**kw))
    assert whole.arguments == arguments, (whole.arguments, arguments)
    # The helper parses a strict tool's arguments at `response.completed`.
    with c.responses.stream(**kw) as s:
        snapshots = [e.snapshot for e in s if e.type == ARGS_DELTA]
        final = s.get_final_response()
    (parsed,) = function_calls(final)
    assert snapshots and snapshots[-1] == parsed.arguments == arguments, (snapshots, arguments)
    assert parsed.parsed_arguments == json.loads(arguments), parsed


def expect_missing(fn, *classes):
    try:
        fn()
    except classes as e:
        return e
    raise AssertionError("expected one of %s" % [k.__name__ for k in classes])


def responses_chain(base):
    c, m = oai(base), model_id(base)
    kw = dict(model=m, max_output_tokens=16, temperature=0)
    r1 = c.responses.create(input="My name is Ada.", **kw)  # store defaults to true
    r2 = c.responses.create(input="What is my name?", previous_response_id=r1.id, **kw)
    r3 = c.responses.create(input="Say it again.", previous_response_id=r2.id, **kw)
    assert (r1.previous_response_id, r2.previous_response_id, r3.previous_response_id) == (None, r1.id, r2.id)
    for r in (r1, r2, r3):
        check_text_response(r, 16)
    # Each turn's prompt holds the ones before it.
    assert r1.usage.input_tokens < r2.usage.input_tokens < r3.usage.input_tokens, (r1.usage, r2.usage, r3.usage)
    got = c.responses.retrieve(r2.id)
    assert (got.id, got.status, got.output_text, got.previous_response_id) == (r2.id, r2.status, r2.output_text, r1.id)
    assert [o.id for o in got.output] == [o.id for o in r2.output], (got.output, r2.output)
    assert got.usage.input_tokens == r2.usage.input_tokens, (got.usage, r2.usage)
    # Input items, newest first by default; each with an id.
    desc = c.responses.input_items.list(r2.id)
    items = desc.data
    assert items and all(i.id for i in items), items
    newest = items[0]
    assert newest.type == "message" and newest.role == "user", newest
    assert [(p.type, p.text) for p in newest.content] == [("input_text", "What is my name?")], newest
    asc = c.responses.input_items.list(r2.id, order="asc").data
    assert [i.id for i in asc] == [i.id for i in reversed(items)], (asc, items)
    first = c.responses.input_items.list(r1.id, order="asc").data
    assert first[0].content[0].text == "My name is Ada.", first
    # Stored items can be referenced by id: r1's input and output, then r2's question, is r2's prompt.
    r4 = c.responses.create(input=[{"type": "item_reference", "id": first[0].id},
                                   {"type": "item_reference", "id": messages_of(r1)[0].id},
                                   {"role": "user", "content": "What is my name?"}], store=False, **kw)
    assert r4.usage.input_tokens == r2.usage.input_tokens, (r4.usage, r2.usage)
    # Deleted: gone, and deleting again is a 404 too.
    assert c.responses.delete(r3.id) is None
    expect_missing(lambda: c.responses.retrieve(r3.id), openai.NotFoundError)
    expect_missing(lambda: c.responses.delete(r3.id), openai.NotFoundError)
    # An unknown previous_response_id: OpenAI answers 400 (code previous_response_not_found,
    # param previous_response_id); a 404 is accepted too.
    e = expect_missing(lambda: c.responses.create(input="Hi", previous_response_id="resp_doesnotexist", **kw),
                       openai.BadRequestError, openai.NotFoundError)
    if e.status_code == 400:
        assert e.param == "previous_response_id", e.body
    # store=False: answered, never retrievable nor chainable.
    r5 = c.responses.create(input="Hello.", store=False, **kw)
    check_text_response(r5, 16)
    expect_missing(lambda: c.responses.retrieve(r5.id), openai.NotFoundError)
    expect_missing(lambda: c.responses.create(input="Hi", previous_response_id=r5.id, **kw),
                   openai.BadRequestError, openai.NotFoundError)


CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
        "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
    },
    "required": ["name", "country", "population"],
    "additionalProperties": False,
}


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=100000000)


def responses_json(base):
    c, m = oai(base), model_id(base)
    fmt = {"format": {"type": "json_schema", "name": "city", "schema": CITY, "strict": True}}
    r = c.responses.create(model=m, input="Describe Paris as JSON.", text=fmt, max_output_tokens=120, temperature=0)
    assert r.status == "completed", (r.status, r.incomplete_details)
    jsonschema.validate(json.loads(r.output_text), CITY)
    # The helper builds the schema from a pydantic model and parses the answer with it.
    p = c.responses.parse(model=m, input="Describe Paris as JSON.", text_format=City, max_output_tokens=120,
                          temperature=0)
    assert isinstance(p.output_parsed, City), p.output
    r = c.responses.create(model=m, input="Describe a cat as a JSON object.", text={"format": {"type": "json_object"}},
                           max_output_tokens=80, temperature=0)
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict), r.output_text
    else:
        assert r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
        assert r.output_text.lstrip().startswith("{"), r.output_text


# --- the Messages API ------------------------------------------------------------------------

STOPS = ("end_turn", "max_tokens", "stop_sequence")
HELLO = [{"role": "user", "content": "Say hello."}]
HELPER_EVENTS = {"text", "input_json", "citation", "thinking", "signature"}


def prompt_of(u):
    """An Anthropic usage's whole prompt: the tokens read fresh, from the cache, and written to it."""
    return u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)


def check_message(r, max_tokens):
    assert r.type == "message" and r.role == "assistant" and r.id, r
    assert isinstance(r.model, str), r.model
    assert r.content and r.content[0].type == "text", r.content
    assert r.stop_reason in STOPS, r.stop_reason
    # A model may end its turn at once (zero tokens, an empty text): which it does depends on
    # the CPU's kernels, so both are valid.
    assert prompt_of(r.usage) > 0 and 0 <= r.usage.output_tokens <= max_tokens, r.usage
    if r.usage.output_tokens == 0:
        assert r.stop_reason == "end_turn" and r.content[0].text == "", (r.stop_reason, r.content)
    if r.stop_reason == "max_tokens":
        assert r.usage.output_tokens == max_tokens, r.usage


def messages_plain(base):
    a, m = ant(base), model_id(base)
    r = a.messages.create(model=m, max_tokens=8, system="You are terse.", messages=HELLO)
    check_message(r, 8)
    # The system prompt as text blocks, the message content as blocks: the same prompt.
    r2 = a.messages.create(model=m, max_tokens=8, system=[{"type": "text", "text": "You are terse."}],
                           messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}])
    check_message(r2, 8)
    assert prompt_of(r2.usage) == prompt_of(r.usage), (r2.usage, r.usage)
    r3 = a.messages.create(model=m, max_tokens=8, messages=HELLO)
    assert prompt_of(r3.usage) < prompt_of(r.usage), "the system prompt is part of the prompt"


def messages_stream(base):
    a, m = ant(base), model_id(base)
    kw = dict(model=m, max_tokens=16, system="You are terse.", messages=HELLO)
    with a.messages.stream(**kw) as s:
        events = list(s)
        assert events, "no events: the anthropic SDK drops SSE events without an `event:` line"
        final = s.get_final_message()
    check_message(final, 16)
    raw = [e.type for e in events if e.type not in HELPER_EVENTS]
    assert collapse(raw, {"content_block_delta"}) == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ], raw
    start = events[0].message
    assert start.content == [] and start.stop_reason is None, start
    # The engine counts the prompt before it streams; a translated upstream's count comes only
    # with message_delta.
    assert start.usage.input_tokens == (prompt_of(final.usage) if COUNTS_FIRST else 0), (start.usage, final.usage)
    assert start.id == final.id, (start.id, final.id)
    block_start = next(e for e in events if e.type == "content_block_start")
    assert block_start.index == 0 and block_start.content_block.type == "text", block_start
    assert block_start.content_block.text == "", block_start
    assert all(e.index == 0 for e in events if e.type in ("content_block_delta", "content_block_stop"))
    text = "".join(e.text for e in events if e.type == "text")
    assert text == final.content[0].text, (text, final.content)
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == final.stop_reason in STOPS, delta
    assert delta.usage.output_tokens == final.usage.output_tokens, delta.usage
    # text_stream and get_final_text.
    with a.messages.stream(**kw) as s:
        text = "".join(s.text_stream)
        assert text == s.get_final_text() == s.get_final_message().content[0].text, text
    # The raw stream: the same event order, every event typed.
    raw = [e.type for e in a.messages.create(stream=True, **kw)]
    assert collapse(raw, {"content_block_delta"}) == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ], raw


# The space and three vowels (four: OpenAI's limit, which the gateway keeps): a stop is met
# within a few tokens, whatever the model says.
STOP_SEQS = [" ", "e", "a", "o"]


def messages_stop_sequence(base):
    a, m = ant(base), model_id(base)
    r = a.messages.create(model=m, max_tokens=32, messages=HELLO, stop_sequences=STOP_SEQS)
    assert r.stop_reason == "stop_sequence", (r.stop_reason, r.content)
    assert r.stop_sequence in STOP_SEQS, r.stop_sequence
    text = "".join(b.text for b in r.content if b.type == "text")
    assert not any(s in text for s in STOP_SEQS), text
    assert r.usage.output_tokens < 32, r.usage
    with a.messages.stream(model=m, max_tokens=32, messages=HELLO, stop_sequences=STOP_SEQS) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence in STOP_SEQS, final
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_sequence == final.stop_sequence, delta


def check_tool_use(block, names=("get_weather",)):
    assert block.type == "tool_use" and block.id and block.name in names, block
    assert isinstance(block.input, dict), block.input
    jsonschema.validate(block.input, SCHEMAS[block.name])


def messages_tool(base):
    a, m = ant(base), model_id(base)
    r = a.messages.create(model=m, max_tokens=64, messages=ASK, tools=A_TOOLS, tool_choice=FORCE_A)
    assert r.stop_reason == "tool_use", (r.stop_reason, r.content)
    # A forced tool: the answer is the call, no text before it.
    assert [b.type for b in r.content] == ["tool_use"], r.content
    use = r.content[0]
    check_tool_use(use)
    history = ASK + [
        {"role": "assistant", "content": r.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": RESULT}]},
    ]
    r2 = a.messages.create(model=m, max_tokens=16, messages=history, tools=A_TOOLS, tool_choice={"type": "none"})
    check_message(r2, 16)
    # Against the question alone with the same tool choice (with "none" a template may leave the
    # tools out of the prompt): the call and its result are part of the prompt.
    r0 = a.messages.create(model=m, max_tokens=16, messages=ASK, tools=A_TOOLS, tool_choice={"type": "none"})
    assert prompt_of(r2.usage) > prompt_of(r0.usage), (r2.usage, r0.usage)
    # Any tool, one call: it ends when its JSON closes.
    r = a.messages.create(model=m, max_tokens=64, messages=ASK, tools=A_TOOLS,
                          tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert r.stop_reason == "tool_use", (r.stop_reason, r.content)
    assert [b.type for b in r.content] == ["tool_use"], r.content
    check_tool_use(r.content[0], names=SCHEMAS)
    # Any tool, parallel allowed: every block validates when the calls closed.
    r = a.messages.create(model=m, max_tokens=96, messages=ASK, tools=A_TOOLS, tool_choice={"type": "any"})
    assert r.stop_reason in ("tool_use", "max_tokens"), r.stop_reason
    if r.stop_reason == "tool_use":
        assert r.content and all(b.type == "tool_use" for b in r.content), r.content
        for b in r.content:
            check_tool_use(b, names=SCHEMAS)


def messages_tool_stream(base):
    a, m = ant(base), model_id(base)
    with a.messages.stream(model=m, max_tokens=64, messages=ASK, tools=A_TOOLS, tool_choice=FORCE_A) as s:
        events = list(s)
        assert events, "no events: the anthropic SDK drops SSE events without an `event:` line"
        final = s.get_final_message()
    raw = [e.type for e in events if e.type not in HELPER_EVENTS]
    assert collapse(raw, {"content_block_delta"}) == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ], raw
    start = next(e for e in events if e.type == "content_block_start")
    block = start.content_block
    assert start.index == 0 and block.type == "tool_use" and block.id and block.name == "get_weather", start
    assert block.input == {}, block.input
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert all(d.type == "input_json_delta" for d in deltas), deltas
    args = json.loads("".join(d.partial_json for d in deltas))
    jsonschema.validate(args, WEATHER_SCHEMA)
    snapshots = [e.snapshot for e in events if e.type == "input_json"]
    assert snapshots and snapshots[-1] == args, snapshots
    assert final.stop_reason == "tool_use", final.stop_reason
    assert [b.type for b in final.content] == ["tool_use"], final.content
    assert final.content[0].input == args and final.content[0].id == block.id, final.content
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "tool_use", delta


def messages_count_tokens(base):
    a, m = ant(base), model_id(base)
    short = a.messages.count_tokens(model=m, system="You are terse.", messages=HELLO)
    assert isinstance(short.input_tokens, int) and short.input_tokens > 0, short
    long_ = a.messages.count_tokens(model=m, system="You are terse.", messages=[
        {"role": "user", "content": "Say hello, then tell me a long story about a dragon who lives in a castle."}])
    assert long_.input_tokens > short.input_tokens, (long_, short)
    tools = a.messages.count_tokens(model=m, system="You are terse.", messages=HELLO, tools=A_TOOLS)
    assert tools.input_tokens > short.input_tokens, "tool definitions are part of the prompt"
    # The count is the prompt the model reads.
    r = a.messages.create(model=m, max_tokens=1, system="You are terse.", messages=HELLO)
    assert prompt_of(r.usage) == short.input_tokens, (r.usage, short)


def expect_anthropic_error(fn, cls, status, kind):
    try:
        fn()
    except cls as e:
        assert e.status_code == status, e.status_code
        body = e.body
        assert isinstance(body, dict) and body.get("type") == "error", body
        assert body["error"]["type"] == kind and isinstance(body["error"]["message"], str), body
        assert e.type == kind, e.type
        return e
    raise AssertionError("expected %s" % cls.__name__)


def messages_errors(base):
    a, m = ant(base), model_id(base)
    # The SDK refuses a create without max_tokens, so the body goes out raw.
    expect_anthropic_error(lambda: a.post("/v1/messages", body={"model": m, "messages": HELLO}, cast_to=object),
                           anthropic.BadRequestError, 400, "invalid_request_error")
    expect_anthropic_error(lambda: a.messages.create(model=m, max_tokens=8, messages=[]),
                           anthropic.BadRequestError, 400, "invalid_request_error")
    expect_anthropic_error(lambda: a.messages.create(model="no-such-model", max_tokens=8, messages=HELLO),
                           anthropic.NotFoundError, 404, "not_found_error")


CHECKS = [responses_plain, responses_stream, responses_tool, responses_tool_stream, responses_chain,
          responses_json, messages_plain, messages_stream, messages_tool, messages_tool_stream,
          messages_count_tokens, messages_errors, messages_stop_sequence]


def explain(e):
    """For an event that failed strict validation: its own model's errors, not the whole union's."""
    body = e.body if isinstance(e.body, dict) else {}
    unions = [openai.types.responses.ResponseStreamEvent, anthropic.types.RawMessageStreamEvent]
    for union in unions:
        for cls in typing.get_args(typing.get_args(union)[0]) or typing.get_args(union):
            ann = getattr(cls, "model_fields", {}).get("type")
            if ann is not None and typing.get_args(ann.annotation) == (body.get("type"),):
                try:
                    cls.model_validate(body)
                except Exception as err:  # noqa: BLE001 - the message is the point
                    return "%s: %s\n%s" % (cls.__name__, err, json.dumps(body)[:2000])
    return "%s\n%s" % (str(e.__cause__)[:3000], json.dumps(e.body)[:2000])


def main():
    global KEY
    args = []
    for a in sys.argv[1:]:
        if a.startswith("--key="):
            KEY = a[len("--key="):]
        else:
            args.append(a)
    if not args:
        sys.exit(__doc__)
    base = args[0].rstrip("/")
    by_name = {f.__name__: f for f in CHECKS}
    names = args[1:] or list(by_name)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        sys.exit("unknown checks %s; the checks: %s" % (unknown, " ".join(by_name)))
    failed = 0
    for name in names:
        try:
            by_name[name](base)
            print("check %s ... ok" % name, flush=True)
        except (openai.APIConnectionError, anthropic.APIConnectionError) as e:
            failed += 1
            print("check %s ... FAILED: no answer from %s: %r (%r)" % (name, base, e, e.__cause__), flush=True)
        except (openai.APIResponseValidationError, anthropic.APIResponseValidationError) as e:
            failed += 1
            traceback.print_exception(e, chain=False)  # the union's every member's errors: too long
            print("the SDK's models reject this body: %s" % explain(e), flush=True)
            print("check %s ... FAILED: %r" % (name, e), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            traceback.print_exc()
            print("check %s ... FAILED: %r" % (name, e), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

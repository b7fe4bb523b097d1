"""The official openai SDK as a real client of `quorum serve` (run by tests/serve.rs).

Usage: python3 openai_client.py BASE_URL   (BASE_URL ends in /v1). Prints one JSON object.
"""
import json
import sys

from openai import BadRequestError, NotFoundError, OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base, api_key="not-needed-on-loopback", max_retries=0, timeout=20)
out = {}
ask = [{"role": "user", "content": "What is 2+2?"}]

r = client.chat.completions.create(
    model="mock/alpha",
    messages=[{"role": "system", "content": "Be brief."}] + ask,
    max_tokens=50,
    extra_body={"session_id": "sdk-session", "source_agent": "openai-python"},
)
out["plain"] = {
    "id": r.id,
    "model": r.model,
    "content": r.choices[0].message.content,
    "finish": r.choices[0].finish_reason,
    "prompt_tokens": r.usage.prompt_tokens,
    "completion_tokens": r.usage.completion_tokens,
    "total_tokens": r.usage.total_tokens,
}

text, finish, usage, chunks = "", None, None, 0
for ch in client.chat.completions.create(
    model="mock/alpha", messages=ask, stream=True, stream_options={"include_usage": True}
):
    chunks += 1
    assert ch.object == "chat.completion.chunk", ch.object
    if ch.usage is not None:
        usage = {"prompt": ch.usage.prompt_tokens, "completion": ch.usage.completion_tokens}
    for c in ch.choices:
        if c.delta.content:
            text += c.delta.content
        if c.finish_reason:
            finish = c.finish_reason
out["stream"] = {"content": text, "finish": finish, "usage": usage, "chunks": chunks}

tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
weather = [{"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
r = client.chat.completions.create(model="mock/alpha", messages=weather, tools=tools, tool_choice="required")
tc = r.choices[0].message.tool_calls[0]
out["tools"] = {
    "finish": r.choices[0].finish_reason,
    "id": tc.id,
    "name": tc.function.name,
    "arguments": json.loads(tc.function.arguments),
}

# Answer the tool call and get the final text.
r2 = client.chat.completions.create(
    model="mock/alpha",
    messages=weather + [
        {"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
        {"role": "tool", "tool_call_id": tc.id, "content": "{\"temp_c\": 21, \"sky\": \"clear\"}"},
    ],
    tools=tools,
)
out["after_tool"] = {"finish": r2.choices[0].finish_reason, "content": r2.choices[0].message.content}

calls, finish = {}, None
for ch in client.chat.completions.create(
    model="mock/alpha", messages=weather, tools=tools, tool_choice="required", stream=True
):
    for c in ch.choices:
        for d in c.delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                slot["id"] = d.id
            if d.function and d.function.name:
                slot["name"] += d.function.name
            if d.function and d.function.arguments:
                slot["arguments"] += d.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
out["stream_tools"] = {
    "finish": finish,
    "calls": [{"id": v["id"], "name": v["name"], "arguments": json.loads(v["arguments"] or "{}")}
              for _, v in sorted(calls.items())],
}

try:
    client.chat.completions.create(model="mock/no-such-model", messages=ask)
    out["not_found"] = None
except NotFoundError as e:
    out["not_found"] = {"status": e.status_code, "code": e.code, "param": e.param}

try:
    client.chat.completions.create(model="mock/alpha", messages=ask, temperature=7)
    out["bad_request"] = None
except BadRequestError as e:
    out["bad_request"] = {"status": e.status_code, "param": e.param}

try:
    for _ in client.chat.completions.create(model="mock/no-such-model", messages=ask, stream=True):
        pass
    out["stream_not_found"] = None
except NotFoundError as e:
    out["stream_not_found"] = {"status": e.status_code, "code": e.code}

out["models"] = [m.id for m in client.models.list().data]
print(json.dumps(out))

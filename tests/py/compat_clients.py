"""Three real OpenAI clients against `quorum serve` (run by tests/serve_limits.rs):
the official openai SDK, the LiteLLM SDK and langchain-openai.

Usage: python3 compat_clients.py BASE_URL   (BASE_URL ends in /v1). Prints one JSON
object; a client whose package is missing is reported as {"skipped": "..."}.
"""
import json
import sys

base = sys.argv[1]
out = {}
ask = [{"role": "user", "content": "hi"}]
MODEL = "openai/gpt-4o-mini"

try:
    import openai
    from openai import OpenAI

    c = OpenAI(base_url=base, api_key="not-needed-on-loopback", max_retries=0, timeout=30)
    o = {}
    m = c.models.retrieve(MODEL)
    o["retrieve"] = {"id": m.id, "object": m.object}
    try:
        c.models.retrieve("openai/no-such-model")
        o["retrieve_missing"] = None
    except openai.NotFoundError as e:
        o["retrieve_missing"] = e.status_code
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r = c.chat.completions.create(
        model=MODEL, messages=ask, seed=7, frequency_penalty=0.5, presence_penalty=0.25,
        logit_bias={"50256": -100}, user="user-1", parallel_tool_calls=False, tools=tools,
        service_tier="default", metadata={"k": "v"}, store=False,
        extra_body={"custom_unknown": {"x": 1}},
    )
    o["passthrough"] = r.choices[0].message.content
    text = ""
    for ch in c.chat.completions.create(model=MODEL, messages=ask, stream=True, seed=8):
        for ch0 in ch.choices:
            text += ch0.delta.content or ""
    o["stream"] = text
    for kwargs in ({"logprobs": True}, {"top_logprobs": 2, "logprobs": True}):
        try:
            c.chat.completions.create(model=MODEL, messages=ask, **kwargs)
            o.setdefault("refused", []).append(None)
        except openai.BadRequestError as e:
            o.setdefault("refused", []).append(e.body.get("param") if isinstance(e.body, dict) else None)
    try:
        c.chat.completions.create(model="mock/alpha", messages=ask, seed=1)
        o["mock_seed"] = None
    except openai.BadRequestError as e:
        o["mock_seed"] = {"status": e.status_code, "param": e.body.get("param") if isinstance(e.body, dict) else None}
    out["openai"] = o
except ImportError as e:
    out["openai"] = {"skipped": str(e)}

try:
    import litellm

    o = {}
    # LiteLLM's "openai/" prefix means "an OpenAI-compatible server"; the rest is our model id.
    r = litellm.completion(model="openai/" + MODEL, api_base=base, api_key="x", messages=ask,
                           seed=11, user="litellm-user")
    o["content"] = r.choices[0].message.content
    text = ""
    for ch in litellm.completion(model="openai/" + MODEL, api_base=base, api_key="x",
                                 messages=ask, stream=True):
        text += ch.choices[0].delta.content or ""
    o["stream"] = text
    out["litellm"] = o
except ImportError as e:
    out["litellm"] = {"skipped": str(e)}

try:
    from langchain_openai import ChatOpenAI

    o = {}
    llm = ChatOpenAI(model=MODEL, base_url=base, api_key="x", seed=13, max_retries=0,
                     model_kwargs={"user": "langchain-user"})
    o["content"] = llm.invoke("hi").content
    o["stream"] = "".join(str(ch.content) for ch in llm.stream("hi"))
    out["langchain"] = o
except ImportError as e:
    out["langchain"] = {"skipped": str(e)}

print(json.dumps(out))

"""The OpenAI-compatible server through the official `openai` client and raw HTTP: JSON and SSE, images and
video, tools, response_format, the structured extension, and clean 4xx errors for invalid requests."""
import base64

import httpx
import openai
import pytest
import torch
from PIL import Image

import qwenvl
from qwenvl.tasks import FrameMap
from serve_util import (BOX_ANSWER, BOX_PROMPT, EXAMPLE, TOOL_ANSWER, TOOL_PROMPT, WEATHER_TOOL, Server, data_url,
                        image_part, noise_image, png_bytes, sse_events, user, write_video)


@pytest.fixture(scope="module")
def vlm(parrot_dir):
    return qwenvl.load(parrot_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def server(vlm):
    with Server(vlm, limit_mm_per_prompt={"image": 2, "video": 1}, max_visual_tokens=2000) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("vid") / "clip.mp4")


IMG = noise_image(150, 220, 1)
IMG_URL = data_url(png_bytes(IMG), "image")  # the Qwen README form: data:image;base64,


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_image_answer_equals_offline_generate(client, vlm):
    r = client.chat.completions.create(model="tiny", messages=user(image_part(IMG_URL), "Describe."), max_tokens=12)
    g = vlm.generate(user({"type": "image", "image": IMG}, "Describe."), max_new_tokens=12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == g.text
    assert r.choices[0].finish_reason == g.finish_reason
    assert r.usage.prompt_tokens == g.usage.prompt_tokens and r.usage.completion_tokens == len(g.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_usage_equals_non_stream(client):
    kw = dict(model="tiny", messages=user(image_part(IMG_URL), "Describe."), max_tokens=12)
    ref = client.chat.completions.create(**kw)
    full = ref.choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [ref.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == ref.usage.prompt_tokens


def test_raw_sse_framing_ends_with_done(server):
    body = {"model": "tiny", "messages": user("Hello"), "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])
    assert "usage" not in events[-2]  # no usage chunk unless asked for


def test_video_file_and_frame_list(client, vlm, video_path):
    mp4 = data_url(open(video_path, "rb").read(), "video/mp4")
    r = client.chat.completions.create(model="tiny", max_tokens=8, messages=user(
        {"type": "video_url", "video_url": {"url": mp4}}, "What moves?"), extra_body={"mm_processor_kwargs": {"fps": 2}})
    g = vlm.generate(user({"type": "video", "video": video_path}, "What moves?"), max_new_tokens=8, fps=2)
    assert r.choices[0].message.content == g.text
    frames = [noise_image(56, 84, k) for k in range(4)]
    url = "data:video/jpeg;base64," + ",".join(base64.b64encode(png_bytes(f, "JPEG")).decode() for f in frames)
    chunks = list(client.chat.completions.create(model="tiny", max_tokens=6, stream=True, messages=user(
        {"type": "video_url", "video_url": {"url": url}}, "What moves?")))
    jpeg_frames = [Image.open(__import__("io").BytesIO(png_bytes(f, "JPEG"))) for f in frames]
    g = vlm.generate(user({"type": "video", "video": jpeg_frames}, "What moves?"), max_new_tokens=6)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == g.text


def test_structured_extension_in_original_coordinates(client, vlm):
    url = data_url(EXAMPLE.read_bytes(), "image/png")
    r = client.chat.completions.create(model="tiny", messages=user(image_part(url), BOX_PROMPT), max_tokens=64)
    assert r.choices[0].message.content == BOX_ANSWER
    found = r.choices[0].model_extra["structured"]
    b = vlm.processor(user({"type": "image", "image": str(EXAMPLE)}, BOX_PROMPT))
    fm = FrameMap.from_media(b.media[0][0])
    assert b.media[0][0].original_size != b.media[0][0].resized_size  # the mapping is not the identity
    want = [round(v, 2) for v in fm.box_to_original((31, 53, 113, 134))]
    assert found["objects"] == [{"label": "red circle", "bbox_2d": want}]
    chunks = list(client.chat.completions.create(model="tiny", messages=user(image_part(url), BOX_PROMPT),
                                                 max_tokens=64, stream=True))
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert last.choices[0].model_extra["structured"] == found


def test_tools_become_tool_calls(client):
    r = client.chat.completions.create(model="tiny", messages=user(TOOL_PROMPT), tools=[WEATHER_TOOL], max_tokens=64)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content is None and len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}' and call.id.startswith("call_")
    chunks = list(client.chat.completions.create(model="tiny", messages=user(TOOL_PROMPT), tools=[WEATHER_TOOL],
                                                 max_tokens=64, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""  # the tag is not leaked
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [(tc.function.name, tc.function.arguments) for tc in calls] == [("get_weather", '{"city": "Paris"}')]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # tool_choice="none" drops the tools: the same question is not answered with the trained call
    r = client.chat.completions.create(model="tiny", messages=user(TOOL_PROMPT), tools=[WEATHER_TOOL],
                                       tool_choice="none", max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content != TOOL_ANSWER


def test_tool_history_messages_are_accepted(client):
    msgs = user(TOOL_PROMPT) + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER_TOOL], max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_constrained_json_schema_answer_follows_the_box_grammar(client, vlm):
    from qwenvl.tasks.constrained import GroundingGrammar
    schema = {"type": "array", "items": {"type": "object", "properties": {"bbox_2d": {"type": "array"},
                                                                         "label": {"type": "string"}}}}
    kw = dict(model="tiny", messages=user(image_part(IMG_URL), "Find it."), max_tokens=24)
    free = client.chat.completions.create(**kw).choices[0].message.content
    r = client.chat.completions.create(**kw, response_format={"type": "json_schema",
                                                              "json_schema": {"name": "boxes", "schema": schema}})
    g = GroundingGrammar(vlm.tokenizer, "bbox")
    assert not g.feed(g.initial, free.encode())  # left alone, the model does not write a box list
    states = g.feed(g.initial, r.choices[0].message.content.encode())
    assert states  # constrained: a valid prefix of `[{"bbox_2d": [...], "label": ...}, ...]`
    assert r.choices[0].finish_reason == "length" or g.accepting(states)


def test_sampling_fields_n_seed_stop(client):
    kw = dict(model="tiny", messages=user("Tell me a story."), max_tokens=10, temperature=1.0, top_p=0.9, seed=7,
              extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1, "min_tokens": 3})
    a = client.chat.completions.create(n=2, **kw)
    b = client.chat.completions.create(n=2, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded
    assert 2 <= a.usage.completion_tokens <= 20
    text = client.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=10).choices[0].message.content
    assert len(text) > 2
    cut = client.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=10, stop=[text[1:3]])
    assert cut.choices[0].finish_reason == "stop" and text[1:3] not in cut.choices[0].message.content
    ids = client.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=10,
                                         extra_body={"ignore_eos": True, "unknown_field": {"x": 1}})
    assert ids.usage.completion_tokens == 10


def _error(exc_info):
    return exc_info.value.status_code, exc_info.value.body


@pytest.mark.parametrize("kw, param", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(max_tokens=0), "max_tokens"),
    (dict(n=99), "n"), (dict(stop=[""]), "stop"), (dict(tool_choice="sometimes", tools=[WEATHER_TOOL]), "tool_choice"),
    (dict(response_format={"type": "xml"}), "response_format"), (dict(logprobs=True), "logprobs"),
    (dict(extra_body={"mm_processor_kwargs": {"max_pixels": 10**12}}), "max_pixels"),
    (dict(extra_body={"top_k": "ten"}), "top_k")])
def test_invalid_fields_are_400_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=user("Hi"), **kw)
    status, body = _error(e)
    assert status == 400 and body["param"] == param and body["type"] == "invalid_request_error"
    assert param.split("_")[0] in body["message"]


def test_bad_messages_and_limits(client, server):
    for messages, needle in (([], "messages"), ([{"role": "robot", "content": "x"}], "role"),
                             (user({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}), "audio"),
                             (user(image_part(IMG_URL), image_part(IMG_URL), image_part(IMG_URL)), "limit-mm"),
                             (user(image_part(data_url(png_bytes(noise_image(1400, 1400, 3))))), "visual tokens"),
                             (user({"type": "video_url", "min_pixels": 1_500_000, "video_url": {  # upscaled
                                 "url": "data:video/jpeg;base64," + ",".join(
                                     [base64.b64encode(png_bytes(noise_image(56, 56, 0), "JPEG")).decode()] * 20)}}),
                              "visual tokens"),
                             (user(image_part("ftp://example.com/a.png")), "scheme"),
                             (user(image_part(data_url(b"not an image at all"))), "cannot be read")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
        assert needle in e.value.body["message"], e.value.body
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user("Hi"))
    assert e.value.body["code"] == "model_not_found"
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", content=b"a=b",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"

"""
Images on /v1/chat/completions, checked in what the provider received: data
URLs become base64 image blocks with the type their bytes show (a JPEG
labelled PNG goes as image/jpeg), https URLs go as URLs, an image stays in a
session's history (the next turn sends it again, from the database), and a
model without "vision" refuses an image before any provider call.
"""
import base64
import json

import pytest

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
CLAUDE = "claude-sonnet-4-6"
GPT = "gpt-4o-mini"


def b64(data):
    return base64.b64encode(data).decode()


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


@pytest.fixture(scope="module")
def server(chatd_module, fake, tmp_path_factory):
    models = tmp_path_factory.mktemp("models") / "models.json"
    models.write_text(json.dumps({"models": [
        {"name": "blind", "provider": "anthropic", "model_id": "claude-haiku-4-5", "features": ["tools"],
         "context_window": 200000, "max_output": 8192, "price": {"input": 1, "output": 5}}]}))
    return chatd_module({"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake.url + "/v1",
                         "MODELS_FILE": str(models)})


def upstream(fake):
    r = fake.http.get("/_fake/requests")
    assert r.status_code == 200, r.text
    return [q for q in r.json()["requests"] if q["path"].startswith("/v1/")]


def post(server, body, headers=None):
    return server.client.post("/v1/chat/completions", json=body, headers=headers or {})


def test_data_url_types_follow_the_bytes(server, fake):
    r = post(server, {"model": CLAUDE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "two pictures"},
        image_part("data:image/png;base64," + b64(PNG)),
        image_part("data:image/png;base64," + b64(JPEG_HEAD)),  # mislabelled
        image_part("https://example.com/cat.webp")]}]})
    assert r.status_code == 200, r.text
    [q] = upstream(fake)
    blocks = q["body"]["messages"][0]["content"]
    assert blocks[0] == {"type": "text", "text": "two pictures"}
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": b64(PNG)}
    assert blocks[2]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": b64(JPEG_HEAD)}
    assert blocks[3]["source"] == {"type": "url", "url": "https://example.com/cat.webp"}
    # three images, counted at 1,600 tokens each by the fake
    assert r.json()["usage"]["prompt_tokens"] >= 3 * 1600


def test_openai_compatible_gets_image_url_parts(server, fake):
    r = post(server, {"model": GPT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, image_part("data:image/png;base64," + b64(PNG))]}]})
    assert r.status_code == 200, r.text
    [q] = upstream(fake)
    parts = q["body"]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "see"}
    assert parts[1]["type"] == "image_url"
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + b64(PNG)


def test_image_stays_in_the_session(server, fake):
    h = {"X-Session-Id": "oa-image-session"}
    r = post(server, {"model": CLAUDE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "remember this"}, image_part("data:image/png;base64," + b64(PNG))]}]}, h)
    assert r.status_code == 200, r.text
    r = post(server, {"model": CLAUDE, "messages": [{"role": "user", "content": "what was it?"}]}, h)
    assert r.status_code == 200, r.text
    reqs = upstream(fake)
    assert len(reqs) == 2
    first = reqs[1]["body"]["messages"][0]["content"]
    assert any(b.get("type") == "image" and b["source"].get("data") == b64(PNG) for b in first), first


def test_model_without_vision_refuses_images(server, fake):
    r = post(server, {"model": "blind", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, image_part("data:image/png;base64," + b64(PNG))]}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unsupported_parameter", err
    assert "blind" in err["message"] and "image" in err["message"], err
    assert upstream(fake) == []


@pytest.mark.parametrize("url,status,needle", [
    ("data:image/png;base64,iVBOR*0KGgo=", 400, "not valid base64"),
    ("data:image/bmp;base64,Qk0=", 400, "data:image/png|jpeg|gif|webp"),
    ("data:image/png;base64," + b64(b"not an image at all"), 400, "not a PNG, JPEG, GIF or WebP"),
    ("http://example.com/a.png", 400, "https URL"),
    ("data:image/png;base64," + b64(PNG + bytes(6 << 10)), 413, "MAX_IMAGE_SIZE"),
])
def test_bad_images(chatd, fake, url, status, needle):
    s = chatd({"MAX_IMAGE_SIZE": "4KiB"})
    r = post(s, {"model": CLAUDE, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, image_part(url)]}]})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and "messages[0].content[1]" in err["message"], err
    assert upstream(fake) == []

"""The HTTP API against a real uvicorn server on 127.0.0.1, with tiny image, text-to-image and text models.

Exact checks: a served image's pixels are those of the same call in-process, and the same whether its job
ran alone or batched with others (per-sample seeds); its PNG is the file ``write_images`` wrote (C2PA
manifest verified, watermark id of its seed); a text job's texts are ``TextModel.generate``'s for its seeds;
the events come in order (queued, started, progress 1..total, done); a cancel stops a job within one step.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from ebru.data.grid import to_uint8
from ebru.serve import ServeLimits, create_app

from .conftest import read_events


@pytest.fixture(scope="module")
def running(models, state, serve):
    app = create_app([models["cond"], models["t2i"], models["chars"]], out_dir=state / "out",
                     limits=ServeLimits(max_steps=400))
    return serve(app)


def submit(client, path="/v1/generations", **body):
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    return r.json()


def wait_done(client, job_id, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} did not finish")


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def job_pixels(client, job) -> list[np.ndarray]:
    return [png_pixels(client.get(im["url"]).content) for im in job["images"]]


def in_process(pipe, **kw) -> list[np.ndarray]:
    a = to_uint8(pipe(**kw)).numpy()
    return [x.squeeze(-1) if x.shape[-1] == 1 else x for x in a]


def test_models_samplers_and_health_describe_what_is_served(running):
    c = running.client
    assert c.get("/healthz").json() == {"status": "ok", "models": ["cond", "t2i", "chars"], "queued": 0,
                                        "auth": "none"}
    models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert [models[n]["kind"] for n in ("cond", "t2i", "chars")] == ["image", "text2image", "text"]
    cond = models["cond"]
    assert cond["classes"] == ["T-shirt/top", "Sneaker", "Bag"] and cond["image_shape"] == [1, 8, 8]
    assert cond["defaults"] == {"sampler": "euler", "steps": 4, "schedule": "karras", "guidance_scale": 1.5}
    assert cond["license"]["summary"].endswith("apache-2.0") and cond["signature"]["status"] == "unsigned"
    assert re.fullmatch(r"[0-9a-f]{64}", cond["digest"]) and cond["watermark"]["scheme"] == "gaussian-shading"
    assert models["t2i"]["text_encoder"] == "all-MiniLM-L6-v2" and models["t2i"]["classes"] is None
    assert models["chars"]["text"]["can_infill"] is True and models["chars"]["defaults"]["length"] == 16
    samplers = c.get("/v1/samplers").json()
    names = {s["name"]: s for s in samplers["samplers"]}
    assert names["heun"]["nfe"] == "2n - 1" and names["euler"]["nfe"] == "n" and "karras" in samplers["schedules"]


def test_a_class_job_streams_its_steps_and_serves_the_signed_pngs_of_the_in_process_call(running):
    from ebru.provenance import verify_file

    c = running.client
    job = submit(c, model="cond", **{"class": "sneaker"}, n=2, steps=3, seed=5, preview_every=1)
    assert job["seeds"] == [5, 6] and job["position"] == 0 and job["url"] == f"/v1/jobs/{job['job_id']}"
    events = read_events(c, job["job_id"])
    names = [e for e, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and "started" in names
    assert [d["step"] for e, d in events if e == "progress"] == [1, 2, 3]
    assert all(d["total"] == 3 for e, d in events if e == "progress")
    previews = [d for e, d in events if e == "preview"]
    assert previews and png_pixels(base64.b64decode(previews[-1]["image"])).shape == (8, 8)
    done = c.get(f"/v1/jobs/{job['job_id']}").json()
    assert done["state"] == "done" and done["progress"] == {"step": 3, "total": 3}
    assert done["settings"]["class"] == ["Sneaker"] and done["settings"]["guidance"] == 1.5
    assert [im["seed"] for im in done["images"]] == [5, 6]
    pipe = running.app.state.server.models["cond"].pipe
    want = in_process(pipe, n=2, class_labels="Sneaker", num_inference_steps=3, seeds=[5, 6])
    got = job_pixels(c, done)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert [im["watermark_id"] for im in done["images"]] == pipe.watermark_ids([5, 6])
    path = running.app.state.server.jobs[job["job_id"]].files[0]
    r = c.get(done["images"][0]["url"])
    assert r.headers["content-type"] == "image/png" and r.content == path.read_bytes()
    assert path.name == "sample-Sneaker-seed0005.png" and path.parent.name == job["job_id"]
    verdict = verify_file(path)
    assert verdict.state == "Trusted", verdict.reasons
    assert verdict.manifest["generation"]["parameters"]["seed"] == 5


def test_jobs_with_the_same_settings_run_batched_and_give_the_images_they_give_alone(running):
    c = running.client
    blocker = submit(c, model="cond", n=16, steps=400, sampler="heun", seed=0)  # keeps the worker busy
    asks = [dict(model="cond", **{"class": "Bag"}, n=1, steps=3, guidance_scale=2.0, seed=40),
            dict(model="cond", **{"class": 0}, n=2, steps=3, guidance_scale=2.0, seed=41),
            dict(model="cond", n=1, steps=3, guidance_scale=2.0, seed=7)]
    jobs = [submit(c, **a) for a in asks]
    assert c.post(f"/v1/jobs/{blocker['job_id']}/cancel").status_code == 202
    batched = []
    for j in jobs:
        events = read_events(c, j["job_id"])
        assert [d["batch"] for e, d in events if e == "started"] == [3]
        batched.append(c.get(f"/v1/jobs/{j['job_id']}").json())
    alone = []
    for a in asks:
        j = submit(c, **a)
        events = read_events(c, j["job_id"])
        assert [d["batch"] for e, d in events if e == "started"] == [1]
        alone.append(c.get(f"/v1/jobs/{j['job_id']}").json())
    for b, s in zip(batched, alone):
        assert b["seeds"] == s["seeds"]
        for x, y in zip(job_pixels(c, b), job_pixels(c, s)):
            np.testing.assert_array_equal(x, y)
    assert wait_done(c, blocker["job_id"])["state"] == "cancelled"


def test_text_to_image_jobs_batched_with_other_prompts_give_their_alone_images(running):
    c = running.client
    blocker = submit(c, model="t2i", prompt="busy", n=16, steps=400, sampler="heun", seed=0)
    asks = [dict(model="t2i", prompt="a red square", n=1, steps=2, seed=3),
            dict(model="t2i", prompt="a long blue square in the corner of a dark canvas", negative_prompt="red",
                 n=2, steps=2, seed=9)]
    jobs = [submit(c, **a) for a in asks]
    c.post(f"/v1/jobs/{blocker['job_id']}/cancel")
    for j in jobs:
        assert [d["batch"] for e, d in read_events(c, j["job_id"]) if e == "started"] == [2]
    batched = [wait_done(c, j["job_id"]) for j in jobs]
    alone = [wait_done(c, submit(c, **a)["job_id"]) for a in asks]
    pipe = running.app.state.server.models["t2i"].pipe
    want = in_process(pipe, prompt="a red square", n=1, num_inference_steps=2, seeds=[3])
    np.testing.assert_array_equal(job_pixels(c, alone[0])[0], want[0])
    for b, s in zip(batched, alone):
        assert b["state"] == s["state"] == "done" and b["settings"]["prompt"] == s["settings"]["prompt"]
        for x, y in zip(job_pixels(c, b), job_pixels(c, s)):
            np.testing.assert_array_equal(x, y)


def test_a_random_seed_is_drawn_and_echoed(running):
    c = running.client
    job = submit(c, model="cond", n=2, steps=1)
    s = job["seeds"]
    assert len(s) == 2 and s[1] == s[0] + 1 and 0 <= s[0] < 2 ** 32
    assert wait_done(c, job["job_id"])["seeds"] == s


def test_cancel_stops_a_running_job_within_one_step(running):
    c = running.client
    job = submit(c, model="cond", n=16, steps=400, sampler="heun", seed=1)
    jid = job["job_id"]
    step_at_cancel = None
    with c.stream("GET", f"/v1/jobs/{jid}/events") as r:
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "progress" and step_at_cancel is None:
                answer = c.post(f"/v1/jobs/{jid}/cancel")
                assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
                step_at_cancel = answer.json()["step"]  # the job's step when the cancel was asked for
            elif line.startswith("data: ") and name == "cancelled":
                final = json.loads(line[6:])
                break
    assert final["step"] <= step_at_cancel + 1 and final["step"] < 400
    done = c.get(f"/v1/jobs/{jid}").json()
    assert done["state"] == "cancelled" and done["images"] == []
    again = c.post(f"/v1/jobs/{jid}/cancel")
    assert again.status_code == 409 and re.search(r"already cancelled", again.json()["error"]["message"])
    assert c.get(f"/v1/jobs/{jid}/images/0").status_code == 409


def test_cancel_of_a_finished_job_is_a_conflict_and_of_a_waiting_one_immediate(running):
    c = running.client
    done = wait_done(c, submit(c, model="cond", n=1, steps=1, seed=0)["job_id"])
    r = c.post(f"/v1/jobs/{done['job_id']}/cancel")
    assert r.status_code == 409 and re.search(r"already done.*nothing to cancel", r.json()["error"]["message"])
    blocker = submit(c, model="cond", n=16, steps=400, sampler="heun", seed=0)
    waiting = submit(c, model="cond", n=1, steps=2, seed=0)
    assert waiting["position"] >= 0
    r = c.post(f"/v1/jobs/{waiting['job_id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    c.post(f"/v1/jobs/{blocker['job_id']}/cancel")
    assert wait_done(c, blocker["job_id"])["state"] == "cancelled"


def test_a_model_that_raises_mid_sampling_fails_its_job_and_the_server_goes_on(running, monkeypatch):
    c = running.client
    pipe = running.app.state.server.models["cond"].pipe
    real, calls = pipe.denoiser, []

    def broken(x, sigma, **cond):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated fault in the network")
        return real(x, sigma, **cond)

    monkeypatch.setattr(pipe, "denoiser", broken)
    job = submit(c, model="cond", n=1, steps=4, seed=0)
    events = read_events(c, job["job_id"])
    assert events[-1][0] == "error" and re.search(r"RuntimeError: simulated fault", events[-1][1]["message"])
    assert [d["step"] for e, d in events if e == "progress"] == [1, 2]  # one (merged) call per euler step
    failed = c.get(f"/v1/jobs/{job['job_id']}").json()
    assert failed["state"] == "failed" and "simulated fault" in failed["error"]
    monkeypatch.setattr(pipe, "denoiser", real)
    assert wait_done(c, submit(c, model="cond", n=1, steps=2, seed=0)["job_id"])["state"] == "done"
    assert c.get("/healthz").json()["status"] == "ok"


def test_text_generation_streams_the_masks_filling_in_and_gives_generate_s_texts(running):
    c = running.client
    job = submit(c, "/v1/text/generations", model="chars", n=2, length=12, steps=4, seed=7)
    assert job["seeds"] == [7, 8]
    events = read_events(c, job["job_id"])
    progress = [d for e, d in events if e == "progress"]
    assert [d["step"] for d in progress] == [1, 2, 3, 4] and all(d["total"] == 4 for d in progress)
    masks = [d["text"].count("\u00b7") for d in progress]
    assert masks == sorted(masks, reverse=True) and masks[0] > 0 and masks[-1] == 0
    texts = c.get(f"/v1/jobs/{job['job_id']}").json()["texts"]
    model = running.app.state.server.models["chars"].pipe
    assert texts == model.generate(2, 12, "", steps=4, seeds=[7, 8]).texts
    assert events[-1] == ("done", {"seeds": [7, 8], "texts": texts})


def test_text_infill_keeps_the_given_text(running):
    c = running.client
    job = submit(c, "/v1/text/infill", model="chars", template="abc [4] hij", seed=2)
    events = read_events(c, job["job_id"])
    assert [d["total"] for e, d in events if e == "progress"] == [4, 4, 4, 4]
    text = events[-1][1]["texts"][0]
    assert len(text) == 12 and text.startswith("abc ") and text.endswith(" hij")
    model = running.app.state.server.models["chars"].pipe
    assert text == model.infill("abc [4] hij", seed=2).text


def test_the_openai_images_endpoint_answers_with_the_pngs(running):
    c = running.client
    r = c.post("/v1/images/generations", json={"model": "cond", "prompt": "Bag", "n": 2, "seed": 11, "steps": 2,
                                               "size": "8x8"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seeds"] == [11, 12] and [d["seed"] for d in body["data"]] == [11, 12]
    pipe = running.app.state.server.models["cond"].pipe
    want = in_process(pipe, n=2, class_labels="Bag", num_inference_steps=2, seeds=[11, 12])
    for d, w in zip(body["data"], want):
        np.testing.assert_array_equal(png_pixels(base64.b64decode(d["b64_json"])), w)
    r = c.post("/v1/images/generations", json={"model": "t2i", "prompt": "a red square", "response_format": "url",
                                               "steps": 1, "seed": 0})
    assert r.status_code == 200 and c.get(r.json()["data"][0]["url"]).status_code == 200
    r = c.post("/v1/images/generations", json={"model": "cond", "prompt": "Bag", "size": "1024x1024"})
    assert r.status_code == 422 and re.search(r"size must be 8x8", r.json()["error"]["message"])


def test_a_client_that_disconnects_mid_stream_leaves_the_job_and_the_server_working(running):
    c = running.client
    job = submit(c, model="cond", n=4, steps=60, sampler="heun", seed=3)
    with c.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        for line in r.iter_lines():
            if line.startswith("event: progress"):
                break  # leave mid-stream: the connection closes
    assert wait_done(c, job["job_id"])["state"] == "done"
    assert c.get("/healthz").json()["status"] == "ok"
    assert [e for e, _ in read_events(c, job["job_id"])][-1] == "done"  # a late reader gets the whole story


def test_the_page_is_one_self_contained_file_under_a_strict_content_security_policy(running):
    r = running.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    html = r.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from elsewhere
    assert not re.search(r"@import|url\(", html)
    for tag in ("script", "style"):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        import hashlib

        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


def test_no_cors_headers_are_sent(running):
    c = running.client
    r = c.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = c.options("/v1/generations", headers={"Origin": "http://evil.example",
                                               "Access-Control-Request-Method": "POST"})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


HOSTILE = [
    ("malformed JSON", b'{"model": "cond", "n": ', 400, r"not valid JSON"),
    ("a list, not an object", b"[1, 2]", 422, r"must be a JSON object"),
    ("n as a string", {"model": "cond", "n": "2"}, 422, r"^n: .*integer.*got \"2\""),
    ("n as a bool", {"model": "cond", "n": True}, 422, r"^n: "),
    ("steps as a float", {"model": "cond", "steps": 2.5}, 422, r"^steps: "),
    ("n = 0", {"model": "cond", "n": 0}, 422, r"n must be a positive integer, got 0"),
    ("n over the limit", {"model": "cond", "n": 17}, 422, r"n must be at most 16 on this server, got 17"),
    ("steps = 0", {"model": "cond", "steps": 0}, 422, r"steps must be a positive integer"),
    ("steps over the limit", {"model": "cond", "steps": 401}, 422, r"steps must be at most 400"),
    ("guidance NaN-like", {"model": "cond", "guidance_scale": 1e300}, 422, r"guidance_scale must be <= 50"),
    ("a 10 KB prompt", {"model": "t2i", "prompt": "x" * 10_000}, 422, r"prompt is 10000 characters.*at most 1000"),
    ("unknown model", {"model": "condd"}, 404, r"unknown model 'condd' \(did you mean 'cond'\?\)"),
    ("a path as the model", {"model": "../cond"}, 422, r"not a path"),
    ("an absolute path", {"model": "/etc/passwd"}, 422, r"not a path"),
    ("unknown sampler", {"model": "cond", "sampler": "eulr"}, 422, r"unknown sampler 'eulr' \(did you mean 'euler'"),
    ("unknown schedule", {"model": "cond", "schedule": "karas"}, 422, r"did you mean 'karras'"),
    ("unknown class", {"model": "cond", "class": "Sneakr"}, 422, r"unknown class 'Sneakr'.*did you mean 'Sneaker'"),
    ("class out of range", {"model": "cond", "class": 7}, 422, r"class 7 out of range"),
    ("a prompt for a class model", {"model": "cond", "prompt": "a bag"}, 422, r"give a class, not a prompt"),
    ("a class for a text-to-image model", {"model": "t2i", "class": 1}, 422, r"give a prompt, not a class"),
    ("no prompt for text-to-image", {"model": "t2i"}, 422, r"give a prompt"),
    ("a text model for images", {"model": "chars"}, 422,
     r"is a text model; this endpoint takes image or text-to-image models"),
    ("unknown key", {"model": "cond", "clas": 1}, 422, r"unknown request key 'clas' \(did you mean 'class'\?\)"),
    ("no model named", {"n": 1}, 422, r"say which model: one of cond, t2i"),
    ("negative seed", {"model": "cond", "seed": -1}, 422, r"seed must be an integer from 0"),
    ("preview too often", {"model": "cond", "preview_every": -1}, 422, r"preview_every must be"),
]


@pytest.mark.parametrize("body,status,message", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_their_status_and_one_clear_line(running, body, status, message):
    c = running.client
    if isinstance(body, bytes):
        r = c.post("/v1/generations", content=body, headers={"content-type": "application/json"})
    else:
        r = c.post("/v1/generations", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and "\n" not in err["message"]
    assert re.search(message, err["message"]), err["message"]


def test_text_requests_are_checked_against_the_model(running):
    c = running.client
    cases = [({"model": "chars", "length": 40}, r"length must be at most the model's context of 32 tokens"),
             ({"model": "chars", "prompt": "XYZ"}, r"XYZ|character"),
             ({"model": "chars", "decoder": "beam"}, r"decoder"),
             ({"model": "cond"}, r"is an image model; this endpoint takes text models"),
             ({"model": "chars", "n": 9}, r"n must be at most 8")]
    for body, message in cases:
        r = c.post("/v1/text/generations", json=body)
        assert r.status_code == 422 and re.search(message, r.json()["error"]["message"]), (body, r.text)
    r = c.post("/v1/text/infill", json={"model": "chars", "template": "no gaps here"})
    assert r.status_code == 422 and re.search(r"no gaps", r.json()["error"]["message"])


def test_a_10_mb_body_is_refused_before_it_is_parsed_and_the_server_goes_on(running):
    c = running.client
    big = json.dumps({"model": "t2i", "prompt": "x" * (10 * 1024 * 1024)}).encode()
    r = c.post("/v1/generations", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and re.search(r"over this server's limit of 65536 bytes", r.json()["error"]["message"])

    def chunks():  # no Content-Length: refused while reading
        for _ in range(200):
            yield b"x" * 1024

    r = c.post("/v1/generations", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.get("/healthz").status_code == 200


def test_unknown_jobs_images_and_endpoints_are_404(running):
    c = running.client
    for path in ("/v1/jobs/0123456789abcdef", "/v1/jobs/../../etc", "/v1/nothing"):
        r = c.get(path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found", path
    done = wait_done(c, submit(c, model="cond", n=1, steps=1, seed=0)["job_id"])
    assert c.get(f"/v1/jobs/{done['job_id']}/images/1").status_code == 404
    assert c.get(f"/v1/jobs/{done['job_id']}/images/-1").status_code == 404


def test_a_full_queue_answers_429_with_retry_after_and_the_server_goes_on(models, state, serve):
    small = serve(create_app([models["cond"]], out_dir=state / "out-small",
                             limits=ServeLimits(max_queue=2, max_steps=400)))
    c = small.client
    busy = submit(c, model="cond", n=16, steps=400, sampler="heun", seed=0)
    deadline = time.monotonic() + 10
    while c.get(f"/v1/jobs/{busy['job_id']}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    waiting = [submit(c, model="cond", n=1, steps=1, seed=s) for s in (0, 1)]
    r = c.post("/v1/generations", json={"model": "cond", "n": 1, "steps": 1})
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert re.search(r"'cond' has 2 jobs waiting", r.json()["error"]["message"])
    assert c.get("/healthz").json()["queued"] == 2
    c.post(f"/v1/jobs/{busy['job_id']}/cancel")
    assert [wait_done(c, j["job_id"])["state"] for j in waiting] == ["done", "done"]
    assert wait_done(c, submit(c, model="cond", n=1, steps=1, seed=2)["job_id"])["state"] == "done"


def test_models_are_named_by_their_folder_or_their_run(tmp_path):
    from ebru.serve.models import model_names

    paths = [tmp_path / "runs" / "fmnist" / "model", tmp_path / "b", tmp_path / "c" / "b", tmp_path / "Écharpe v2"]
    assert model_names(paths) == ["fmnist", "b", "b-2", "Echarpe_v2"]


def test_a_body_not_sent_as_json_is_named_so(running):
    r = running.client.post("/v1/generations", content=b'{"model": "cond"}', headers={"content-type": "text/plain"})
    assert r.status_code == 422 and re.search(r"Content-Type: application/json", r.json()["error"]["message"])
    r = running.client.post("/v1/generations")
    assert r.status_code == 422 and re.search(r"JSON object", r.json()["error"]["message"])


# ---------------------------------------------------------------------------- found by using the server as a user
def test_a_string_that_is_not_unicode_text_is_refused_before_it_is_queued(running):
    c = running.client  # "\ud800" is valid JSON but no UTF-8 text: it failed in the tokenizer, then GET /v1/jobs/ID 500
    cases = [("/v1/generations", b'{"model": "t2i", "prompt": "a \\ud800 bag", "steps": 1}', r"^prompt "),
             ("/v1/generations", b'{"model": "cond", "class": "\\udfff"}', r"^class "),
             ("/v1/text/infill", b'{"model": "chars", "template": "ab [2] \\ud83d"}', r"^template "),
             ("/v1/images/generations", b'{"model": "t2i", "prompt": "x", "user": "\\ud800"}', r"^user ")]
    for path, body, where in cases:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        message = r.json()["error"]["message"]
        assert re.search(where + r"is not valid Unicode text: a lone surrogate \('\\ud[89a-f][0-9a-f]{2}'\)",
                         message), message
    assert c.get("/healthz").json()["queued"] == 0


def test_head_is_answered_on_get_endpoints_with_get_s_headers_and_no_body(running):
    c = running.client
    done = wait_done(c, submit(c, model="cond", n=1, steps=1, seed=0)["job_id"])
    for path in ("/", "/healthz", "/v1/models", f"/v1/jobs/{done['job_id']}", done["images"][0]["url"]):
        got, head = c.get(path), c.head(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert int(head.headers["content-length"]) == len(got.content), path
    assert c.head(f"/v1/jobs/{done['job_id']}/events").status_code == 405  # a stream has no length to give
    assert c.head("/v1/jobs/0123456789abcdef").status_code == 404


def test_a_compressed_or_non_utf8_body_gets_one_clear_line(running):
    import gzip

    c = running.client
    body = json.dumps({"model": "cond", "n": 1, "steps": 1}).encode()
    r = c.post("/v1/generations", content=gzip.compress(body),
               headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415 and re.search(r"Content-Encoding 'gzip' is not accepted.*uncompressed",
                                              r.json()["error"]["message"]), r.text
    r = c.post("/v1/generations", content='{"model": "t2i", "prompt": "café"}'.encode("latin-1"),
               headers={"content-type": "application/json; charset=latin-1"})
    assert r.status_code == 400 and re.search(r"not UTF-8 \(byte 0xe9 at offset 31\)",
                                              r.json()["error"]["message"]), r.text


def test_an_image_index_is_digits_only(running):
    c = running.client  # "1.0" used to be read as 1 (a lax int): an image index is a whole number, nothing else
    done = wait_done(c, submit(c, model="cond", n=2, steps=1, seed=0)["job_id"])
    url = f"/v1/jobs/{done['job_id']}/images/"
    assert c.get(url + "1").status_code == 200
    for k in ("1.0", "+1", "0x1", "1e0", "-1", "%2e%2e", str(10 ** 20)):
        r = c.get(url + k)
        assert r.status_code == 404 and re.search(r"has images 0 to 1, not", r.json()["error"]["message"]), (k, r.text)


def test_each_image_of_a_class_job_names_its_class(running):
    c = running.client  # "all classes in turn": the page could not tell which image was which class
    done = wait_done(c, submit(c, model="cond", n=4, steps=1, seed=0)["job_id"])
    assert [im["class"] for im in done["images"]] == ["T-shirt/top", "Sneaker", "Bag", "T-shirt/top"]
    assert [im["file"] for im in done["images"]][1] == "sample-Sneaker-seed0001.png"
    t2i = wait_done(c, submit(c, model="t2i", prompt="a bag", n=1, steps=1, seed=0)["job_id"])
    assert "class" not in t2i["images"][0]


def test_a_body_that_stalls_is_answered_408_and_its_connection_closed(models, state, serve):
    import socket

    slow = serve(create_app([models["cond"]], out_dir=state / "out-slow", limits=ServeLimits(body_timeout_s=0.5)))
    host, port = slow.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\": ")  # 10 of the 100 bytes, then nothing
        t0, answer = time.monotonic(), b""
        while chunk := s.recv(4096):  # the server answers, then closes
            answer += chunk
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 ") and 0.4 < took < 5, (answer[:200], took)
    assert re.search(rb"did not arrive within 0.5 s \(10 bytes came\)", answer)
    with socket.create_connection((host, int(port)), timeout=10) as s:  # declared too big, then stalls: the
        s.sendall(b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"  # drain
                  b"Content-Length: 1000000\r\n\r\n{\"model\": ")  # of what it sends stops at the deadline
        t0, answer = time.monotonic(), b""
        while chunk := s.recv(4096):
            answer += chunk
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 413 ") and 0.4 < took < 5, (answer[:200], took)
    with socket.create_connection((host, int(port)), timeout=10) as s:  # curl's way for a body over 1 MiB: it
        s.sendall(b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"  # waits
                  b"Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n")  # for 100 Continue to send it
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]  # not "100 Continue": 10 MB sent just to be dropped
    assert slow.client.get("/healthz").status_code == 200


def test_a_worker_that_is_shutting_down_refuses_new_jobs(running, tmp_path):
    from ebru.serve.jobs import Job, ModelWorker, ShuttingDown

    model = running.app.state.server.models["cond"]
    w = ModelWorker(model, ServeLimits(), tmp_path)  # never started: shutdown needs no thread
    waiting = Job(model, "image", {"steps": 1}, [0], None)
    w.submit(waiting)
    w.shutdown()
    assert waiting.state == "cancelled" and waiting.events_since(0)[0][-1] == (
        "cancelled", {"step": 0, "total": 1, "reason": "the server is shutting down"})
    with pytest.raises(ShuttingDown, match="shutting down; model 'cond' takes no new jobs"):
        w.submit(Job(model, "image", {"steps": 1}, [1], None))
    from ebru.serve.app import Server
    from ebru.serve.limits import RequestError

    server = Server({"cond": model}, ServeLimits(), tmp_path, None, "hash")  # workers made, never started
    server.workers["cond"].shutdown()
    late = Job(model, "image", {"steps": 1}, [2], None)
    with pytest.raises(RequestError, match="shutting down") as e:
        server.submit(late)
    assert e.value.status == 503 and late.id not in server.jobs


def test_a_reconnecting_event_stream_resumes_after_last_event_id_and_ends_with_204(running):
    c = running.client  # EventSource reconnects whenever a stream ends: it used to get the whole job again, forever
    job = submit(c, model="cond", n=1, steps=3, seed=0)
    full = read_events(c, job["job_id"])
    assert [e for e, _ in full] == ["queued", "started", "progress", "progress", "progress", "done"]
    with c.stream("GET", f"/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": "4"}) as r:
        lines = [line for line in r.iter_lines() if line.startswith(("event: ", "id: "))]
    assert lines == ["event: progress", "id: 5", "event: done", "id: 6"]
    r = c.get(f"/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": "6"})
    assert r.status_code == 204 and r.content == b""
    for junk in ("-1", "x", "99999999999999999999"):  # not an event id: the stream from the start
        assert read_events(c, job["job_id"], headers={"Last-Event-ID": junk}) == full


def test_json_nested_too_deeply_or_with_a_huge_number_is_named_so(running):
    c = running.client  # json.loads raises RecursionError / ValueError: FastAPI said "error parsing the body"
    for body in ('{"model": "cond", "class": ' + "[" * 30000 + "]" * 30000 + "}", '{"model": "cond", "seed": '
                 + "9" * 5000 + "}"):
        r = c.post("/v1/generations", content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert re.search(r"not JSON this server reads: nested too deeply, or a number of more than 4300 digits",
                         r.json()["error"]["message"]), r.text


def test_limits_refuse_a_job_size_over_the_batch_size():
    with pytest.raises(ValueError, match=r"max_images \(32\) is over max_batch \(16\).*raise max_batch"):
        ServeLimits(max_images=32)  # a 32-image job was drawn in one call, past the 16 max_batch promised
    assert ServeLimits(max_images=32, max_batch=32).max_batch == 32
    with pytest.raises(ValueError, match=r"body_timeout_s must be > 0"):
        ServeLimits(body_timeout_s=0)

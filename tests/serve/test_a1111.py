"""AUTOMATIC1111's API on ``ebru serve``: a client written against it works, and gets ebru's images.

Exact checks: txt2img's base64 PNGs are the pixels of the same call in-process (A1111's names mapped to ebru's
sampler and schedule), its ``info`` names the seeds; progress reports a running job's step and interrupt stops it;
what ebru does not do (hires fix, an ancestral sampler, another size) is refused in one line; the routes need the
token like every other API route, and one token cannot hold more than ``max_jobs_per_client`` jobs.
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
from ebru.serve.a1111 import a1111_sampler
from ebru.serve.auth import add_token
from ebru.serve.limits import RequestError


@pytest.fixture(scope="module")
def running(models, state, serve):
    return serve(create_app([models["cond"], models["t2i"]], out_dir=state / "out-a1111",
                            limits=ServeLimits(max_steps=400)))


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def in_process(pipe, **kw) -> list[np.ndarray]:
    a = to_uint8(pipe(**kw)).numpy()
    return [x.squeeze(-1) if x.shape[-1] == 1 else x for x in a]


# the body sdwebuiapi's txt2img sends, with its defaults (webuiapi 0.9)
SDWEBUIAPI = {"enable_hr": False, "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
              "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
              "prompt": "", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0,
              "seed_resize_from_h": 0, "seed_resize_from_w": 0, "sampler_name": None, "batch_size": 1, "n_iter": 1,
              "steps": None, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": False, "tiling": False,
              "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0,
              "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
              "override_settings_restore_afterwards": True, "script_args": [], "script_name": None,
              "send_images": True, "save_images": False, "alwayson_scripts": {}, "sampler_index": "Euler a"}


def test_txt2img_gives_the_in_process_images_with_a1111_names(running):
    c = running.client
    body = {**SDWEBUIAPI, "prompt": "a red square", "negative_prompt": "blue", "seed": 5, "batch_size": 2,
            "steps": 3, "cfg_scale": 2.5, "width": 8, "height": 8, "sampler_name": "DPM++ 2M Karras",
            "override_settings": {"sd_model_checkpoint": "t2i"}}
    r = c.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    info = json.loads(out["info"])
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5 and info["sd_model_name"] == "t2i"
    assert info["sampler_name"] == "DPM++ 2M Karras" and info["steps"] == 3 and info["cfg_scale"] == 2.5
    assert len(info["watermark_ids"]) == 2 and len(info["sha256"]) == 2
    assert re.fullmatch(r"[0-9a-f]{16}", info["job_id"])
    pipe = running.app.state.server.models["t2i"].pipe
    want = in_process(pipe, prompt="a red square", negative_prompt="blue", n=2, num_inference_steps=3,
                      guidance_scale=2.5, sampler="dpmpp_2m", schedule="karras", seeds=[5, 6])
    assert len(out["images"]) == 2
    for got, w in zip(out["images"], want):
        np.testing.assert_array_equal(pixels(got), w)
    assert out["parameters"]["prompt"] == "a red square"


def test_txt2img_on_a_class_model_reads_the_prompt_as_the_class(running):
    c = running.client
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "Bag", "seed": 3, "steps": 2, "model": "cond",
                                          "sampler_name": "Euler", "send_images": True})
    assert r.status_code == 200, r.text
    pipe = running.app.state.server.models["cond"].pipe
    [want] = in_process(pipe, n=1, class_labels="Bag", num_inference_steps=2, sampler="euler", seeds=[3])
    np.testing.assert_array_equal(pixels(r.json()["images"][0]), want)
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "Bag", "model": "cond", "steps": 1, "send_images": False})
    assert r.status_code == 200 and r.json()["images"] == [] and json.loads(r.json()["info"])["urls"]
    # sdwebuiapi's stock body: its legacy sampler_index default ("Euler a") is not ebru's, so the model's sampler runs
    r = c.post("/sdapi/v1/txt2img", json={**SDWEBUIAPI, "prompt": "Bag", "steps": 1, "width": 8, "height": 8,
                                          "override_settings": {"sd_model_checkpoint": "cond"}})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["sampler_name"] == "euler"  # the model's default, named


@pytest.mark.parametrize(("body", "message"), [
    ({"enable_hr": True}, r"enable_hr: ebru does not do hires fix"),
    ({"restore_faces": True}, r"face restoration"),
    ({"styles": ["cinematic"]}, r"saved styles"),
    ({"alwayson_scripts": {"controlnet": {}}}, r"scripts"),
    ({"sampler_name": "Euler a"}, r"sampler 'Euler a' is not one ebru has .*DPM\+\+ 2M"),
    ({"scheduler": "Polyexponential"}, r"scheduler 'Polyexponential'"),
    ({"width": 512, "height": 512}, r"width must be 8: model 't2i' draws 8x8"),
    ({"batch_size": 0}, r"batch_size must be from 1 to 16"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, r"only sd_model_checkpoint"),
    ({"override_settings": {"sd_model_checkpoint": "../etc"}}, r"not a path"),
    ({"model": "cond", "override_settings": {"sd_model_checkpoint": "t2i"}}, r"name different models"),
    ({"hires": True}, r"unknown .*hires"),
    ({"prompt": 5}, r"prompt"),
])
def test_what_ebru_does_not_do_is_refused_in_one_line(running, body, message):
    r = running.client.post("/sdapi/v1/txt2img", json={"prompt": "x", "model": "t2i", **body})
    assert r.status_code == 422, r.text
    assert re.search(message, r.json()["error"]["message"]), r.json()


def test_progress_follows_a_running_job_and_interrupt_stops_it(running):
    c = running.client
    idle = c.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    job = c.post("/v1/generations", json={"model": "cond", "n": 16, "steps": 400, "sampler": "heun",
                                          "seed": 0}).json()["job_id"]
    deadline = time.monotonic() + 20
    while True:
        p = c.get("/sdapi/v1/progress").json()
        if p["state"]["sampling_step"] >= 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert p["state"]["job"] == job and p["state"]["sampling_steps"] == 400 and 0 < p["progress"] < 1
    assert p["eta_relative"] > 0
    assert c.post("/sdapi/v1/interrupt").json() == {"interrupted": [job]}
    deadline = time.monotonic() + 20
    while c.get(f"/v1/jobs/{job}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_samplers_and_models_are_listed_in_a1111_shape(running):
    c = running.client
    samplers = c.get("/sdapi/v1/samplers").json()
    assert {"name": "DPM++ 2M", "aliases": ["dpmpp_2m"], "options": {}} in samplers
    models = c.get("/sdapi/v1/sd-models").json()
    assert {m["title"] for m in models} == {"cond", "t2i"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", m["sha256"]) and m["hash"] == m["sha256"][:10] for m in models)


def test_sampler_names_map_onto_ebru_s():
    assert a1111_sampler("DPM++ 2M Karras", None) == ("dpmpp_2m", "karras")
    assert a1111_sampler("UniPC", "Karras") == ("unipc", "karras")
    assert a1111_sampler("heun", "Automatic") == ("heun", None)
    assert a1111_sampler(None, None) == (None, None)
    with pytest.raises(RequestError, match="LMS"):
        a1111_sampler("LMS", None)


def test_the_routes_need_a_token_and_one_token_holds_at_most_its_quota(models, state, serve, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens = {name: add_token(path, name) for name in ("ana", "bo")}
    guarded = serve(create_app([models["cond"]], tokens_file=path, out_dir=state / "out-quota",
                               limits=ServeLimits(max_steps=400, max_jobs_per_client=2)))
    c = guarded.client
    assert c.post("/sdapi/v1/txt2img", json={"prompt": "Bag"}).status_code == 401
    assert c.get("/sdapi/v1/progress").status_code == 401
    ana, bo = ({"Authorization": f"Bearer {tokens[n]}"} for n in ("ana", "bo"))
    body = {"model": "cond", "n": 16, "steps": 400, "sampler": "heun", "seed": 0}
    jobs = [c.post("/v1/generations", json=body, headers=ana) for _ in range(2)]
    assert [r.status_code for r in jobs] == [202, 202]
    r = c.post("/v1/generations", json=body, headers=ana)
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert re.search(r"token 'ana' already has 2 jobs queued or running", r.json()["error"]["message"])
    other = c.post("/v1/generations", json={**body, "n": 1, "steps": 1}, headers=bo)
    assert other.status_code == 202  # another token is not held back by ana's
    assert c.get("/sdapi/v1/progress", headers=bo).json()["state"]["job"] == other.json()["job_id"]
    assert c.post("/sdapi/v1/interrupt", headers=bo).json()["interrupted"] in ([], [other.json()["job_id"]])
    for r in jobs:
        c.post(f"/v1/jobs/{r.json()['job_id']}/cancel", headers=ana)

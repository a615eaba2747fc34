"""Real batching below Ray: ``SoundtrackGenerator.generate_batch`` and ``sampler.generate_videos``.

The contract under test (written once, in ``soundtrack.pipelines.sampler.generate_videos``):
a request sampled in a batch equals the same request run alone (``generate``) within
``BATCH_TOLERANCE``, and bit for bit when it runs alone (a batch of one, a request whose
options no other request shares, ``max_rows=1``, the one-by-one fallback). Every clip keeps
its own noise (seed, clip id), one bad request gets its error while the others run, and the
batch goes through one denoising loop: fewer denoiser forwards than the requests alone.

The model is the untrained tiny generator with its VAE decoder's output layer scaled by
:data:`DECODER_GAIN`: the raw decoder gives log-mels up to ~18 (waveforms of ~1e7 before the
[-1, 1] clip), where clipping turns the batch's 1e-5 relative rounding into full-scale jumps
at zero crossings; scaled, the waveforms peak below 0.5, the level of a trained model.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from soundtrack.errors import GeneratorError
from soundtrack.pipelines.generator import GenerationRequest, build_tiny_generator
from soundtrack.pipelines.sampler import BATCH_TOLERANCE

# diffusers' DPM-Solver calls np.array on a tensor (numpy 2 deprecation inside diffusers).
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

STEPS = 2  # DPM-Solver++ steps of the tiny model here: one denoiser forward per step and loop
DECODER_GAIN = 0.15  # scale of the decoder's last conv: waveforms peak at 0.06-0.4 (module docstring)
CUT_FRAME = 15  # the "cut" clip's shot boundary (frame index): marks the rows a diverging model breaks


def _frames(n: int, background: tuple[int, int, int], speed: int, cut: int | None = None) -> np.ndarray:
    """``n`` 32-px frames: a white square moving ``speed`` px a frame; a new background from ``cut``."""
    out = np.empty((n, 32, 32, 3), np.uint8)
    out[:] = background
    if cut is not None:
        out[cut:] = (255 - background[0], 255 - background[1], 255 - background[2])
    for i in range(n):
        x = (speed * i) % 24
        out[i, 10:18, x : x + 8] = 255
    return out


# 3.1 s, 2.5 s and 6.0 s videos (one 10.24 s window each) and an 11.0 s one (two windows)
REQUESTS = {
    "a": GenerationRequest(_frames(31, (20, 30, 120), 1), seed=1, clip_id="a"),
    "b": GenerationRequest(_frames(25, (120, 40, 20), 2), seed=2, clip_id="b"),
    "d": GenerationRequest(_frames(60, (30, 110, 40), 3), seed=4, clip_id="d"),
    "long": GenerationRequest(_frames(110, (90, 90, 90), 1), seed=3, clip_id="long"),
}


def _scale_decoder(g):
    """The decoder's last conv times :data:`DECODER_GAIN`, in place (module docstring)."""
    with torch.no_grad():
        g.vae.decoder.conv_out.weight.mul_(DECODER_GAIN)
        g.vae.decoder.conv_out.bias.mul_(DECODER_GAIN)
    return g


@pytest.fixture(scope="module")
def gen():
    """The tiny generator (seed 0, 2 steps, 8 Griffin-Lim iterations), decoder output scaled."""
    return _scale_decoder(build_tiny_generator(None, seed=0, num_steps=STEPS))


def _alone(gen, req: GenerationRequest) -> np.ndarray:
    return gen.generate(req.frames, seed=req.seed, clip_id=req.clip_id, caption=req.caption, **req.overrides)


@pytest.fixture(scope="module")
def solo(gen):
    """Each request of :data:`REQUESTS` through ``generate`` on its own."""
    return {k: _alone(gen, r) for k, r in REQUESTS.items()}


@contextlib.contextmanager
def counting(gen):
    """Counts the denoiser's forward calls (each guided step is one call, all rows in it)."""
    real, calls = gen.denoiser.forward, []

    def forward(*args, **kwargs):
        calls.append(args[0].shape[0])  # rows of the call: windows x guidance passes
        return real(*args, **kwargs)

    gen.denoiser.forward = forward
    try:
        yield calls
    finally:
        del gen.denoiser.forward  # back to the class's method


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return float(np.abs(a - b).max())


def test_batch_equals_each_clip_alone_in_one_denoising_loop(gen, solo):
    """Three clips with different seeds: one loop of STEPS forwards over 3 x 4 rows (each clip's
    unconditional pass plus one per condition) instead of 3 x STEPS forwards of 4 rows."""
    keys = ("a", "b", "d")
    with counting(gen) as batched:
        out = gen.generate_batch([REQUESTS[k] for k in keys])
    with counting(gen) as alone:
        again = {k: _alone(gen, REQUESTS[k]) for k in keys}
    assert batched == [3 * 4] * STEPS
    assert alone == [4] * (3 * STEPS)
    for k, wav in zip(keys, out):
        assert np.array_equal(again[k], solo[k])  # generate itself is deterministic
        assert _max_diff(wav, solo[k]) <= BATCH_TOLERANCE, k
        assert 0 < np.abs(solo[k]).max() < 0.5  # the level the tolerance is meant for (module docstring)
    # Different clips really are different: the tolerance is far below their differences.
    assert _max_diff(out[0][:40000], out[1]) > 10 * BATCH_TOLERANCE


def test_a_batch_stops_when_all_its_callers_are_gone_and_not_before(gen, solo):
    """should_stop per request (a client that went away): a loop stops at its next step only
    once every request of it asks to; a request still wanted keeps its batch mate running and
    both outputs stay those of the batch; a request alone stops alone."""
    import dataclasses

    from soundtrack.pipelines.sampler import GenerationCancelled

    gone, wanted = (lambda: True), (lambda: False)
    a, b = (dataclasses.replace(REQUESTS[k], should_stop=gone) for k in ("a", "b"))
    with counting(gen) as calls:
        out = gen.generate_batch([a, b])
    assert all(isinstance(r, GenerationCancelled) for r in out) and calls == []  # stopped before step 1
    keep = dataclasses.replace(REQUESTS["b"], should_stop=wanted)
    out = gen.generate_batch([a, keep])
    assert not any(isinstance(r, GenerationCancelled) for r in out)
    assert _max_diff(out[0], solo["a"]) <= BATCH_TOLERANCE and _max_diff(out[1], solo["b"]) <= BATCH_TOLERANCE
    alone = gen.generate_batch([a])  # a group of one: its own hook
    assert isinstance(alone[0], GenerationCancelled)


def test_batch_of_one_and_max_rows_1_are_bit_identical(gen, solo):
    for k in ("a", "long"):  # one window; two windows (generate denoises them one by one)
        assert np.array_equal(gen.generate_batch([REQUESTS[k]])[0], solo[k]), k
    # One row per loop is the arithmetic of the clips alone, batched or not.
    with counting(gen) as calls:
        out = gen.generate_batch([REQUESTS["a"], REQUESTS["long"]], max_rows=1)
    assert calls == [4] * (3 * STEPS)
    assert np.array_equal(out[0], solo["a"]) and np.array_equal(out[1], solo["long"])


def test_bad_jobs_get_their_errors_and_the_others_run_together(gen, solo):
    bad = [
        GenerationRequest(REQUESTS["a"].frames, overrides={"num_steps": 0}),  # out of range
        GenerationRequest(REQUESTS["a"].frames, overrides={"stepz": 3}),  # unknown option
        GenerationRequest(REQUESTS["a"].frames.astype(np.float32)),  # not uint8 frames
        GenerationRequest(REQUESTS["a"].frames, caption="a piano"),  # no text in this model
        GenerationRequest(np.zeros((7300, 8, 8, 3), np.uint8)),  # 730 s: over max_seconds
        GenerationRequest(REQUESTS["a"].frames, overrides={"weights": {"text": 1.0}}),  # no weighted condition
    ]
    with counting(gen) as calls:
        out = gen.generate_batch([bad[0], REQUESTS["a"], *bad[1:4], REQUESTS["b"], *bad[4:]])
    assert calls == [2 * 4] * STEPS  # a and b: one loop
    errors = [out[0], *out[2:5], *out[6:]]
    words = ("num_steps must be an integer >= 1", "unknown generation option(s) ['stepz']",
             "frames must be a uint8 array", "trained without text conditioning", "longer than this model's limit",
             "present conditions sum to 0")
    for req, err, w in zip(bad, errors, words):
        assert isinstance(err, GeneratorError) and w in str(err), (w, err)
        if req is not bad[-1]:  # generate refuses them with the same message (the last: a ValueError)
            with pytest.raises(GeneratorError) as alone:
                _alone(gen, req)
            assert str(alone.value) == str(err)
    assert _max_diff(out[1], solo["a"]) <= BATCH_TOLERANCE
    assert _max_diff(out[5], solo["b"]) <= BATCH_TOLERANCE


def test_mixed_durations_share_the_loop(gen, solo):
    """An 11 s video (two windows) and 3.1 s, 2.5 s and 6.0 s ones: five rows, one loop, each
    video its own length. (On our CPU batches of up to 3 rows happened to round exactly as the
    clips alone; this one, 20 rows a forward, does not: differences of ~1e-5.)"""
    keys = ("long", "a", "b", "d")
    with counting(gen) as calls:
        out = gen.generate_batch([REQUESTS[k] for k in keys])
    assert calls == [5 * 4] * STEPS
    assert out[0].shape == (gen.n_samples(110),) == (176000,) and out[1].shape == (gen.n_samples(31),)
    for k, wav in zip(keys, out):
        assert wav.shape == solo[k].shape and _max_diff(wav, solo[k]) <= BATCH_TOLERANCE, k


def test_incompatible_options_are_grouped_apart(gen, solo):
    """a and d share the model's settings; b asks for 3 steps, a loop of its own (alone: bit-identical)."""
    b3 = GenerationRequest(REQUESTS["b"].frames, seed=2, clip_id="b", overrides={"num_steps": 3})
    same_as_default = GenerationRequest(REQUESTS["d"].frames, seed=4, clip_id="d",
                                        overrides={"num_steps": STEPS, "guidance_scale": gen.sampler.guidance_scale})
    with counting(gen) as calls:
        out = gen.generate_batch([REQUESTS["a"], b3, same_as_default])
    assert sorted(calls) == sorted([2 * 4] * STEPS + [4] * 3)
    assert np.array_equal(out[1], _alone(gen, b3))
    assert _max_diff(out[0], solo["a"]) <= BATCH_TOLERANCE
    assert _max_diff(out[2], solo["d"]) <= BATCH_TOLERANCE


def test_each_clip_keeps_its_seed_whatever_the_order(gen, solo):
    ab = gen.generate_batch([REQUESTS["a"], REQUESTS["b"]])
    ba = gen.generate_batch([REQUESTS["b"], REQUESTS["a"]])
    assert _max_diff(ab[0], ba[1]) <= BATCH_TOLERANCE and _max_diff(ab[1], ba[0]) <= BATCH_TOLERANCE
    assert _max_diff(ab[0], solo["a"]) <= BATCH_TOLERANCE and _max_diff(ba[0], solo["b"]) <= BATCH_TOLERANCE
    # Another seed for a: a different soundtrack, b unchanged.
    a2 = GenerationRequest(REQUESTS["a"].frames, seed=2, clip_id="a")
    out = gen.generate_batch([a2, REQUESTS["b"]])
    assert _max_diff(out[0], solo["a"]) > 10 * BATCH_TOLERANCE
    assert _max_diff(out[1], solo["b"]) <= BATCH_TOLERANCE


def test_a_diverging_job_gets_its_error_the_others_their_outputs(gen, solo, caplog):
    """A model that diverges on one clip (non-finite output on the rows of the clip with a cut at
    CUT_FRAME): the batched loop's NaN guard fires, the batch reruns one by one, so that clip
    gets generate's own error and the others exactly their solo outputs."""
    cut = GenerationRequest(_frames(30, (200, 200, 40), 2, cut=CUT_FRAME), seed=5, clip_id="cut")
    assert gen.conditions_from_frames(cut.frames).shots == [[float(CUT_FRAME)]]
    assert all(float(CUT_FRAME) not in gen.conditions_from_frames(REQUESTS[k].frames).shots[0] for k in "ab")
    real = gen.denoiser.forward

    def diverges_on_the_cut(latents, t, conds, *args, **kwargs):
        out = real(latents, t, conds, *args, **kwargs)
        rows = [i for i, shots in enumerate(conds.shots) if float(CUT_FRAME) in shots]
        out[rows] = float("nan")
        return out

    gen.denoiser.forward = diverges_on_the_cut
    try:
        with pytest.raises(GeneratorError) as alone:
            _alone(gen, cut)
        out = gen.generate_batch([REQUESTS["a"], cut, REQUESTS["b"]])
    finally:
        del gen.denoiser.forward
    assert "clip 'cut' window 1/1: denoising step 1/2" in str(alone.value)
    assert isinstance(out[1], GeneratorError) and str(out[1]) == str(alone.value)
    assert np.array_equal(out[0], solo["a"]) and np.array_equal(out[2], solo["b"])
    assert "running them one by one" in caplog.text


def test_deployment_batches_and_can_be_switched_off(tmp_path, solo):
    """``GeneratorDeployment._run`` without Ray: batched by default, one by one with batching=False."""
    from soundtrack.serving.generator import GeneratorDeployment
    from soundtrack.serving.options import GenerationJob

    build_tiny_generator(tmp_path / "model", seed=0, num_steps=STEPS)  # the weights of the gen fixture
    cls = GeneratorDeployment.func_or_class  # the class under @serve.deployment
    jobs = [GenerationJob(REQUESTS[k].frames, seed=REQUESTS[k].seed, clip_id=k) for k in ("a", "b")]
    jobs.insert(1, GenerationJob(REQUESTS["a"].frames, overrides={"num_steps": 0}))
    for batching in (True, False):
        dep = cls(f"file:{tmp_path / 'model'}", str(tmp_path), max_batch_size=3, batching=batching)
        _scale_decoder(dep.gen)
        assert dep.info()["batching"]["enabled"] is batching
        with counting(dep.gen) as calls:
            outs = dep._run(jobs)
        assert calls == ([2 * 4] * STEPS if batching else [4] * (2 * STEPS))
        assert [o.batch_size for o in outs] == [3, 3, 3]
        assert outs[1].wav is None and "num_steps must be" in outs[1].error
        for o, k in ((outs[0], "a"), (outs[2], "b")):
            assert o.error is None and o.sr == 16000 and o.seconds > 0
            if batching:
                assert _max_diff(o.wav, solo[k]) <= BATCH_TOLERANCE
            else:
                assert np.array_equal(o.wav, solo[k])

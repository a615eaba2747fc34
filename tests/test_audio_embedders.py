"""Standard audio embedders (VGGish, PANNs CNN14, LAION-CLAP) loaded from LOCAL weight files.

Each test builds a tiny model in that backbone's on-disk format (same key names and layout,
small widths), saves it in tmp_path, loads it through :func:`load_embedder` and checks the
embeddings against a reference forward pass written here independently (functional torch
ops over the saved tensors, torchlibrosa's front end for CNN14, laion_clap's own HTSAT
``forward`` for CLAP).
"""

from __future__ import annotations

import hashlib
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from soundtrack.errors import BackboneError, ConfigError, MetricError
from soundtrack.models import audio_embedders as ae
from soundtrack.models import clap_adapter


def _wav(sr: int, seconds: float, seed: int, freq: float = 440.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _sha8(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


# ----------------------------------------------------------------------------- VGGish


def _vggish_reference(state: dict, examples: np.ndarray) -> np.ndarray:
    """torchvggish's VGG.forward written with functional ops over the saved tensors."""
    x = torch.from_numpy(examples)[:, None]
    for j, i in enumerate((0, 3, 6, 8, 11, 13)):
        x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
        if j in (0, 1, 3, 5):
            x = F.max_pool2d(x, 2, 2)
    x = torch.transpose(x, 1, 3)
    x = torch.transpose(x, 1, 2).contiguous().view(x.shape[0], -1)
    for i in (0, 2, 4):
        x = F.relu(F.linear(x, state[f"embeddings.{i}.weight"], state[f"embeddings.{i}.bias"]))
    return x.numpy()


@pytest.fixture(scope="module")
def vggish_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vggish")
    torch.manual_seed(0)
    net = ae.VGGishNet(conv=(2, 4, 4, 4, 8, 8), fc=(16, 16, 8))
    with torch.no_grad():  # positive last-layer biases: the final ReLU keeps most units alive
        net.embeddings[4].bias.add_(0.5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(state, d / "vggish.pth")
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    pca = {"pca_eigen_vectors": (3.0 * q).float(), "pca_means": torch.randn(8, 1)}
    torch.save(pca, d / "pca.pth")
    return d, state, pca


def test_vggish_front_end_follows_the_reference_mel_definition():
    w = ae.vggish_mel_matrix()
    assert w.shape == (257, 64) and np.all(w[0] == 0) and np.all(w >= 0)
    centre_bins = w.argmax(axis=0)
    assert np.all(np.diff(centre_bins) >= 0)  # bands in increasing frequency
    hz = np.linspace(0, 8000, 257)
    assert w[hz < 125].sum() == 0 and w[hz > 7500].sum() == 0  # 125-7500 Hz only
    # HTK mel: band 31's peak sits at mel(125) + 32/65 * (mel(7500) - mel(125)).
    mel = lambda f: 1127 * np.log1p(f / 700)  # noqa: E731
    peak_mel = mel(125) + 32 / 65 * (mel(7500) - mel(125))
    assert abs(hz[centre_bins[31]] - 700 * np.expm1(peak_mel / 1127)) <= 16  # within half a 31 Hz bin
    # 3 s of 16 kHz audio: 1 + (48000 - 400) // 160 = 298 frames -> 3 examples of 96 x 64.
    ex = ae.vggish_examples(_wav(16000, 3.0, 0, freq=1000.0))
    assert ex.shape == (3, 96, 64) and ex.dtype == np.float32
    band = np.argmax(ex.mean(axis=(0, 1)))
    lo, hi = 700 * np.expm1(np.linspace(mel(125), mel(7500), 66)[[band, band + 2]] / 1127)
    assert lo < 1000 < hi  # a 1 kHz tone peaks in the band that contains 1 kHz
    silence = ae.vggish_examples(np.zeros(100))  # shorter than one example: padded to one
    assert silence.shape == (1, 96, 64) and np.allclose(silence, np.log(0.01))


def test_vggish_loads_torchvggish_format_and_matches_the_reference(vggish_files):
    d, state, pca = vggish_files
    emb = ae.load_embedder(f"vggish:{d / 'vggish.pth'}")
    assert (emb.name, emb.sample_rate, emb.dim) == ("vggish", 16000, 8)
    assert emb.identity == f"vggish sha256:{_sha8(d / 'vggish.pth')} (dim 8)"
    for k, v in state.items():  # the loaded weights are the saved ones
        assert torch.equal(emb.net.state_dict()[k], v), k
    clips = [(_wav(16000, 3.0, 1), 16000), (_wav(22050, 0.5, 2), 22050), (_wav(44100, 2.1, 3), 44100)]
    for wav, sr in clips:
        (out,) = emb.embed([wav], sr)
        n16 = len(ae.resample(wav, sr, 16000))
        frames = 1 + (max(n16, 15600) - 400) // 160
        assert out.shape == (1 + (frames - 96) // 96, 8) and out.dtype == np.float32
        assert np.isfinite(out).all() and out.std() > 0
        ref = _vggish_reference(state, ae.vggish_examples(ae.resample(wav, sr, 16000)))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(out, emb.embed([wav], sr)[0])  # deterministic
    # One batch of clips with different lengths gives the per-clip results.
    outs = emb.embed([clips[0][0], clips[0][0][:8000]], 16000)
    assert [o.shape[0] for o in outs] == [3, 1]


def test_vggish_pca_postprocessing_and_safetensors(vggish_files, tmp_path):
    from safetensors.torch import save_file

    d, state, pca = vggish_files
    raw = ae.load_embedder(f"vggish:{d / 'vggish.pth'}")
    post = ae.load_embedder(f"vggish:{d / 'vggish.pth'},pca={d / 'pca.pth'}")
    assert post.identity == f"vggish sha256:{_sha8(d / 'vggish.pth')} +pca sha256:{_sha8(d / 'pca.pth')} (dim 8)"
    wav = _wav(16000, 2.0, 4)
    e, p = raw.embed([wav], 16000)[0], post.embed([wav], 16000)[0]
    m, q = pca["pca_means"].numpy().reshape(-1), pca["pca_eigen_vectors"].numpy()
    by_hand = np.round((np.clip((e - m) @ q.T, -2, 2) + 2) * 255 / 4)
    np.testing.assert_allclose(p, by_hand, atol=1e-3)
    assert p.min() >= 0 and p.max() <= 255 and np.all(p == np.round(p)) and len(np.unique(p)) > 2
    # The same weights as .safetensors load to the same embedder.
    save_file(state, str(tmp_path / "vggish.safetensors"))
    np.testing.assert_array_equal(ae.load_embedder(f"vggish:{tmp_path / 'vggish.safetensors'}").embed([wav], 16000)[0], e)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_wrong_files_and_specs_give_clear_errors(vggish_files, tmp_path):
    d, state, _ = vggish_files
    with pytest.raises(BackboneError, match="not found"):
        ae.load_embedder(f"vggish:{tmp_path / 'nope.pth'}")
    # A PANNs-like file given as VGGish: the message names the missing torchvggish keys.
    torch.save({"model": {"conv_block1.conv1.weight": torch.zeros(2, 1, 3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(BackboneError, match=r"features\.0\.weight.*torchvggish"):
        ae.load_embedder(f"vggish:{tmp_path / 'other.pth'}")
    with pytest.raises(BackboneError, match=r"conv_block1\.conv2\.weight"):
        ae.load_embedder(f"panns:{tmp_path / 'other.pth'}")
    with pytest.raises(BackboneError, match="audio_branch"):
        ae.load_embedder(f"clap:{d / 'vggish.pth'}")
    # A pickle with code in it is refused by the weights-only loader.
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.weight": _Evil()}, protocol=2))
    with pytest.raises(BackboneError, match="weights_only"):
        ae.load_embedder(f"vggish:{tmp_path / 'evil.pth'}")
    # Wrong shapes (a layer of another width) are refused, not partially loaded.
    bad = dict(state)
    bad["embeddings.2.weight"] = torch.zeros(16, 15)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="wrong shape"):
        ae.load_embedder(f"vggish:{tmp_path / 'bad.pth'}")
    torch.save({"pca_eigen_vectors": torch.eye(4), "pca_means": torch.zeros(4)}, tmp_path / "pca4.pth")
    with pytest.raises(BackboneError, match="PCA shapes"):
        ae.load_embedder(f"vggish:{d / 'vggish.pth'},pca={tmp_path / 'pca4.pth'}")
    for spec, pattern in [("wav2vec:/x.pth", "unknown kind"), ("vggish:", "no weight file"),
                          ("vggish:/x.pth,pca", "key=value"), ("vggish:/x.pth,window=3", "unknown option"),
                          ("panns:/x.pth,window=abc", "seconds")]:
        with pytest.raises(ConfigError, match=pattern):
            ae.load_embedder(spec)
    emb = ae.load_embedder(f"vggish:{d / 'vggish.pth'}")
    with pytest.raises(MetricError, match="non-finite"):
        emb.embed([np.array([0.0, np.nan] * 9000)], 16000)
    with pytest.raises(MetricError, match="mono"):
        emb.embed([np.zeros((2, 16000))], 16000)
    # Non-finite weights give non-finite embeddings, which raise.
    broken = dict(state)
    broken["embeddings.4.bias"] = torch.full((8,), float("inf"))
    torch.save(broken, tmp_path / "inf.pth")
    with pytest.raises(MetricError, match="non-finite embeddings"):
        ae.load_embedder(f"vggish:{tmp_path / 'inf.pth'}").embed([_wav(16000, 1.0, 0)], 16000)


# ----------------------------------------------------------------------------- PANNs


def _cnn14_reference(state: dict, wav: torch.Tensor, spectrogram, logmel) -> np.ndarray:
    """Cnn14.forward's "embedding" (eval) with torchlibrosa's front end and functional ops."""
    x = logmel(spectrogram(wav))  # (B, 1, T, 64)
    x = x.transpose(1, 3)
    x = F.batch_norm(x, state["bn0.running_mean"], state["bn0.running_var"], state["bn0.weight"], state["bn0.bias"], eps=1e-5)
    x = x.transpose(1, 3)
    for i in range(1, 7):
        for j in (1, 2):
            p = f"conv_block{i}."
            x = F.conv2d(x, state[p + f"conv{j}.weight"], padding=1)
            x = F.relu(F.batch_norm(x, state[p + f"bn{j}.running_mean"], state[p + f"bn{j}.running_var"],
                                    state[p + f"bn{j}.weight"], state[p + f"bn{j}.bias"], eps=1e-5))
        if i < 6:
            x = F.avg_pool2d(x, kernel_size=(2, 2))
    x = torch.mean(x, dim=3)
    x = torch.max(x, dim=2)[0] + torch.mean(x, dim=2)
    return F.relu(F.linear(x, state["fc1.weight"], state["fc1.bias"])).numpy()


@pytest.fixture(scope="module")
def panns_file(tmp_path_factory):
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    d = tmp_path_factory.mktemp("panns")
    torch.manual_seed(1)
    net = ae.Cnn14Net(widths=(2, 4, 4, 8, 8, 8), emb_dim=16, classes=3)
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained model has
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        net.bn0.running_mean.fill_(-40.0)  # dB inputs
        net.bn0.running_var.fill_(400.0)
        net.fc1.bias.add_(0.3)
    spectrogram = Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
                              pad_mode="reflect", freeze_parameters=True)
    logmel = LogmelFilterBank(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0, amin=1e-10,
                              top_db=None, freeze_parameters=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    full = dict(state)
    full.update({f"spectrogram_extractor.{k}": v for k, v in spectrogram.state_dict().items()})
    full.update({f"logmel_extractor.{k}": v for k, v in logmel.state_dict().items()})
    assert "spectrogram_extractor.stft.conv_real.weight" in full and "logmel_extractor.melW" in full
    torch.save({"model": full, "iteration": 1000}, d / "Cnn14.pth")
    return d / "Cnn14.pth", state, full, spectrogram.eval(), logmel.eval()


def test_panns_loads_checkpoint_and_matches_torchlibrosa_reference(panns_file):
    path, state, full, spectrogram, logmel = panns_file
    emb = ae.load_embedder(f"panns:{path}")
    assert (emb.name, emb.sample_rate, emb.dim) == ("panns", 32000, 16)
    assert emb.identity == f"panns sha256:{_sha8(path)} (dim 16)"
    for k, v in state.items():
        assert torch.equal(emb.net.state_dict()[k], v), k
    # Our recomputed front end equals torchlibrosa's (the checkpoint's buffers).
    wav = torch.from_numpy(_wav(32000, 1.0, 5))[None]
    with torch.no_grad():
        torch.testing.assert_close(emb.net.log_mel(wav), logmel(spectrogram(wav)), rtol=1e-4, atol=2e-3)
    for wav, sr, n_win in [(_wav(32000, 2.5, 6), 32000, 1), (_wav(16000, 0.1, 7), 16000, 1), (_wav(44100, 1.3, 8), 44100, 1)]:
        (out,) = emb.embed([wav], sr)
        assert out.shape == (n_win, 16) and np.isfinite(out).all() and out.std() > 0
        x = ae.resample(wav, sr, 32000).astype(np.float32)
        x = np.pad(x, (0, max(0, 31 * 320 - x.size)))  # padded to 32 STFT frames
        with torch.no_grad():
            ref = _cnn14_reference(state, torch.from_numpy(x)[None], spectrogram, logmel)
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-4)
        np.testing.assert_array_equal(out, emb.embed([wav], sr)[0])


def test_panns_windows_long_clips_and_refuses_another_front_end(panns_file, tmp_path):
    path, state, full, spectrogram, logmel = panns_file
    emb = ae.load_embedder(f"panns:{path},window=5")
    wav = _wav(8000, 12.0, 9)
    (out,) = emb.embed([wav], 8000)
    assert out.shape == (3, 16)  # windows 0-5 s, 5-10 s and the last 5 s (7-12 s)
    x = ae.resample(wav, 8000, 32000).astype(np.float32)
    with torch.no_grad():
        last = _cnn14_reference(state, torch.from_numpy(x[-160000:])[None], spectrogram, logmel)
    np.testing.assert_allclose(out[2:], last, rtol=2e-3, atol=2e-4)
    other = dict(full)
    other["logmel_extractor.melW"] = full["logmel_extractor.melW"].roll(1, dims=1)
    torch.save({"model": other}, tmp_path / "other_front_end.pth")
    with pytest.raises(BackboneError, match="mel filterbank"):
        ae.load_embedder(f"panns:{tmp_path / 'other_front_end.pth'}")
    with pytest.raises(ConfigError, match="window"):
        ae.load_embedder(f"panns:{path},window=0")


# ----------------------------------------------------------------------------- LAION-CLAP

SENTENCES = ["a dog barks loudly in the yard", "rain falls on a tin roof", "upbeat piano music with drums",
             "a car engine idles", "birds sing in the morning"]


def _tiny_htsat() -> nn.Module:
    htsat = clap_adapter.import_htsat()
    with warnings.catch_warnings():  # laion_clap's torch.meshgrid call without indexing=
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        return htsat.HTSAT_Swin_Transformer(
            spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=5, embed_dim=8, depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 2], window_size=8, config=clap_adapter.HTSATAudioCfg(class_num=5), enable_fusion=False,
        ).eval()


@pytest.fixture(scope="module")
def clap_files(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    d = tmp_path_factory.mktemp("clap")
    # A tiny byte-level BPE tokenizer in RoBERTa's layout (vocab.json + merges.txt), saved
    # as a transformers tokenizer directory.
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    (d / "bpe").mkdir()
    bpe.save_model(str(d / "bpe"))
    tok = RobertaTokenizer(vocab=str(d / "bpe" / "vocab.json"), merges=str(d / "bpe" / "merges.txt"))
    tok.save_pretrained(str(d / "tokenizer"))
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=100, type_vocab_size=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(2)
    text = RobertaModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():  # larger than BERT's init (std 0.02), so that captions embed differently
        for name, p in text.named_parameters():
            if p.ndim == 2 and "embeddings" not in name:
                p.normal_(0.0, 0.3)
    # The directory's own weights differ from the checkpoint's: the loader must use the latter.
    RobertaModel(config, add_pooling_layer=True).save_pretrained(str(d / "roberta"))
    audio = _tiny_htsat()
    audio_projection = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16)).eval()
    text_projection = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 16)).eval()
    state = {}
    for prefix, module in [("audio_branch", audio), ("text_branch", text), ("audio_projection", audio_projection),
                           ("text_projection", text_projection)]:
        state.update({f"module.{prefix}.{k}": v.clone() for k, v in module.state_dict().items()})
    state["module.text_branch.embeddings.position_ids"] = torch.arange(100)[None]  # transformers 4.x saved it
    state["module.logit_scale_a"] = torch.tensor(2.65)
    state["module.logit_scale_t"] = torch.tensor(2.65)
    torch.save({"epoch": 3, "name": "tiny", "state_dict": state}, d / "clap.pt")
    return d, audio, text, audio_projection, text_projection, tok


def _clap_audio_reference(audio, projection, wav48: np.ndarray) -> np.ndarray:
    """laion_clap's path: int16 round trip, repeatpad to 10 s, HTSAT.forward, projection, normalise."""
    x = (np.clip(wav48, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32767
    n = 480000
    x = np.pad(np.tile(x, n // x.size), (0, n - (n // x.size) * x.size))
    with torch.no_grad():
        e = audio({"waveform": torch.from_numpy(x)[None]}, device="cpu")["embedding"]
        return F.normalize(projection(e), dim=-1).numpy()


def test_clap_audio_and_text_match_laion_clap_and_score_is_mean_cosine(clap_files):
    d, audio, text, audio_projection, text_projection, tok = clap_files
    spec = f"clap:{d / 'clap.pt'},text={d / 'roberta'},tokenizer={d / 'tokenizer'}"
    emb = ae.load_embedder(spec)
    assert (emb.name, emb.sample_rate, emb.dim) == ("clap", 48000, 16)
    assert emb.identity == f"clap sha256:{_sha8(d / 'clap.pt')} (dim 16)"
    for ref, got in [(audio, emb.htsat), (text, emb.text_branch), (audio_projection, emb.audio_projection),
                     (text_projection, emb.text_projection)]:
        for k, v in ref.state_dict().items():
            assert torch.equal(got.state_dict()[k], v), k
    noise = 0.5 * np.random.default_rng(11).standard_normal(32000).astype(np.float32)
    # Very different clips (a tone, loud noise, a quiet low tone), so the random tiny model's
    # audio embeddings differ and mismatched pairs score differently.
    clips = [(_wav(48000, 3.0, 10), 48000), (noise, 16000), (0.01 * _wav(44100, 1.0, 12, freq=220), 44100)]
    outs = [emb.embed([w], sr)[0] for w, sr in clips]
    for (w, sr), out in zip(clips, outs):
        assert out.shape == (1, 16) and np.isfinite(out).all()
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
        ref = _clap_audio_reference(audio, audio_projection, ae.resample(w, sr, 48000))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(outs[0], emb.embed([clips[0][0]], 48000)[0])
    # A 12 s clip: windows 0-10 s and 2-12 s.
    assert emb.embed([_wav(16000, 12.0, 13)], 16000)[0].shape == (2, 16)

    texts = SENTENCES[:3]
    t = emb.embed_text(texts)
    with torch.no_grad():
        batch = tok(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        pooled = text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        t_ref = F.normalize(text_projection(pooled), dim=-1).numpy()
    np.testing.assert_allclose(t, t_ref, rtol=1e-4, atol=1e-5)

    wavs = [ae.resample(w, sr, 48000) for w, sr in clips]  # the clips `outs` were computed from
    a = np.stack([o[0] for o in outs])  # one window each: the clip embedding is that window
    matched = emb.clap_score(texts, wavs, 48000)
    shifted = texts[1:] + texts[:1]  # every clip paired with another clip's caption
    mismatched = emb.clap_score(shifted, wavs, 48000)
    by_hand = np.mean([float(t_ref[i] @ a[i]) for i in range(3)])
    by_hand_mis = np.mean([float(t_ref[(i + 1) % 3] @ a[i]) for i in range(3)])
    assert matched == pytest.approx(by_hand, abs=1e-3) and mismatched == pytest.approx(by_hand_mis, abs=1e-3)
    assert abs(matched - mismatched) > 0.01
    np.testing.assert_allclose(emb.clap_similarities(texts, wavs, 48000), [t_ref[i] @ a[i] for i in range(3)], atol=1e-3)
    with pytest.raises(MetricError, match="pairs"):
        emb.clap_score(texts[:2], wavs, 48000)


def test_clap_audio_only_and_bad_text_dirs(clap_files, tmp_path):
    d, *_ = clap_files
    audio_only = ae.load_embedder(f"clap:{d / 'clap.pt'}")
    assert audio_only.embed([_wav(48000, 1.0, 14)], 48000)[0].shape == (1, 16)
    with pytest.raises(ConfigError, match="text="):
        audio_only.embed_text(["a dog"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="config.json"):
        ae.load_embedder(f"clap:{d / 'clap.pt'},text={tmp_path / 'empty'}")
    with pytest.raises(BackboneError, match="not found"):
        ae.load_embedder(f"clap:{d / 'clap.pt'},text={d / 'roberta'},tokenizer={tmp_path / 'missing'}")
    # A checkpoint without its text side cannot embed text.
    state = torch.load(d / "clap.pt", weights_only=True)["state_dict"]
    audio_state = {k: v for k, v in state.items() if not k.startswith(("module.text_branch", "module.text_projection"))}
    torch.save({"state_dict": audio_state}, tmp_path / "audio.pt")
    with pytest.raises(BackboneError, match="text_branch"):
        ae.load_embedder(f"clap:{tmp_path / 'audio.pt'},text={d / 'roberta'}")

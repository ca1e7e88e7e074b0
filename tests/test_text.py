"""Text conditioning: PathLDM's long-caption encoding, the other modes, encoders, the embedding cache."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from histoldm.cli import main
from histoldm.errors import UserError
from histoldm.models.bundle import TextContract
from histoldm.text.cache import TextCache, read_captions, run_encode_text
from histoldm.text.config import EncodeTextConfig
from histoldm.text.encoders import load_text_encoder, tiny_clip_model
from histoldm.text.long_captions import chunk_ids, text_transformer
from histoldm.text.tokenizer import BOS_ID, EOS_ID, clip_tokenizer

SHORT = "a photo of a cat"
LONG = "high tumor; low til; " + "invasive ductal carcinoma with lymphovascular invasion and necrosis, " * 12
assert 160 < len(clip_tokenizer()(LONG, verbose=False)["input_ids"])  # really longer than 154


@pytest.fixture(scope="module")
def pathldm():
    return load_text_encoder("tiny-clip", "pathldm", 154)


def _tokens(texts, length=154):
    enc = clip_tokenizer()(texts, max_length=length, padding="max_length", truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_pathldm_tokenisation_matches_openai_ids():
    ids, mask = _tokens([SHORT, LONG])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == EOS_ID).all()  # pad = EOS
    assert mask[0].tolist() == [1] * 7 + [0] * 147  # the first EOS is a real token
    assert ids[1, 0] == BOS_ID and ids[1, -1] == EOS_ID and mask[1].all()  # truncated: EOS at 153
    assert ids[1, 77] != BOS_ID  # one tokenisation: the second chunk has no BOS of its own


def test_pathldm_first_77_equal_a_plain_clip_pass(pathldm):
    """The standard CLIPTextModel forward (its own causal + padding mask and final layer norm)
    over the first 77 ids reproduces positions 0..76 of the 154-token pass."""
    texts = [SHORT, LONG, ""]
    out = pathldm.encode(texts)
    assert out.shape == (3, 154, 64) and out.dtype == torch.float32
    ids, mask = _tokens(texts)
    with torch.no_grad():
        plain = pathldm.model(input_ids=ids[:, :77], attention_mask=mask[:, :77]).last_hidden_state
    torch.testing.assert_close(out[:, :77], plain, atol=1e-5, rtol=0)
    # the second chunk sees the first (one pass), so it differs from encoding it alone
    with torch.no_grad():
        alone = pathldm.model(input_ids=ids[1:2, 77:], attention_mask=mask[1:2, 77:]).last_hidden_state
    assert (out[1, 77:] - alone[0]).abs().max() > 1e-3


def test_pathldm_equals_a_154_position_clip_with_repeated_position_table(pathldm):
    """Chunks sharing position ids 0..76 + one masked pass == a CLIP whose 154-row position table is
    the 77-row one twice, run by transformers' own forward with the padding mask."""
    src = tiny_clip_model()
    cfg = CLIPTextConfig(**{**src.config.to_dict(), "max_position_embeddings": 154})
    big = CLIPTextModel(cfg).eval()
    state = {k: v for k, v in src.state_dict().items() if "position" not in k}
    big.load_state_dict(state, strict=False)
    table = text_transformer(src).embeddings.position_embedding.weight
    with torch.no_grad():
        text_transformer(big).embeddings.position_embedding.weight.copy_(torch.cat([table, table]))
        ids, mask = _tokens([SHORT, LONG])
        expected = big(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(pathldm.encode([SHORT, LONG]), expected, atol=1e-5, rtol=0)


def test_chunks_mode_second_chunk_starts_with_bos():
    bpe = clip_tokenizer()([LONG], add_special_tokens=False, verbose=False)["input_ids"]
    ids = chunk_ids(bpe, 2, 77)
    assert ids[0, 0] == BOS_ID and ids[0, 76] == EOS_ID and ids[0, 77] == BOS_ID and ids[0, 153] == EOS_ID
    assert ids[0, 78:153].tolist() == bpe[0][75:150]  # chunk 2 continues where chunk 1 stopped
    enc = load_text_encoder("tiny-clip", "chunks", 154)
    out = enc.encode([LONG, SHORT])
    assert out.shape == (2, 154, 64)
    # encoded on its own: the BOS state opening chunk 2 is the BOS state opening chunk 1
    torch.testing.assert_close(out[:, 77], out[:, 0], atol=1e-5, rtol=0)
    assert enc.truncated([LONG, SHORT]) == [True, False]


def test_truncate_and_interpolate_modes():
    trunc = load_text_encoder("tiny-clip", "truncate", None)
    assert trunc.length == 77 and trunc.encode([SHORT]).shape == (1, 77, 64)
    with pytest.raises(UserError, match="at most 77"):
        load_text_encoder("tiny-clip", "truncate", 154)
    interp = load_text_encoder("tiny-clip", "interpolate", 154)
    out = interp.encode([LONG])
    ref = load_text_encoder("tiny-clip", "pathldm", 154).encode([LONG])
    assert out.shape == (1, 154, 64)
    torch.testing.assert_close(out[:, 0], ref[:, 0], atol=1e-5, rtol=0)  # position 0 keeps its embedding
    assert (out[:, 100:] - ref[:, 100:]).abs().max() > 1e-3
    assert len({trunc.fingerprint, interp.fingerprint, load_text_encoder("tiny-clip", "pathldm").fingerprint}) == 3
    with pytest.raises(UserError, match="mode 'bogus'"):
        load_text_encoder("tiny-clip", "bogus")


def test_tiny_clip_is_identical_in_another_process(pathldm):
    code = (
        "from histoldm.text.encoders import load_text_encoder;"
        "e = load_text_encoder('tiny-clip', 'pathldm', 154);"
        "print(e.fingerprint, repr(e.encode(['a photo of a cat']).double().sum().item()))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert other[0] == pathldm.fingerprint
    assert float(other[1]) == pytest.approx(pathldm.encode([SHORT]).double().sum().item(), abs=1e-9)


def test_local_folder_loads_like_tiny_clip(tmp_path, pathldm):
    tiny_clip_model().save_pretrained(tmp_path / "clip")
    enc = load_text_encoder(str(tmp_path / "clip"), "pathldm", 154)
    assert enc.fingerprint == pathldm.fingerprint and enc.name == str(tmp_path / "clip")
    torch.testing.assert_close(enc.encode([LONG]), pathldm.encode([LONG]), atol=0, rtol=0)
    with pytest.raises(UserError, match="no config.json"):
        load_text_encoder(str(tmp_path), "pathldm")


def test_minilm_gives_384_d_states():
    enc = load_text_encoder("minilm", "truncate", 32)
    out = enc.encode(["tumor cells", "dense lymphocytic infiltrate " * 20])
    assert out.shape == (2, 32, 384) and enc.dim == 384 and torch.isfinite(out).all()
    assert enc.n_truncated == 1
    with pytest.raises(UserError, match="only mode truncate"):
        load_text_encoder("minilm", "pathldm")


def test_appending_to_a_cache_in_another_dtype_is_refused(tmp_path, capsys):
    """A bf16 cache extended by a pathldm (float32) run would recast the old rows and relabel the cache float32."""
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{SHORT}\n", encoding="utf-8")
    out = tmp_path / "cache"
    base = ["encode-text", str(captions), "--text-encoder", "tiny-clip", "--out", str(out), "--device", "cpu"]
    assert main([*base, "--dtype", "bfloat16"]) == 0
    captions.write_text(f"{SHORT}\n{LONG}\n", encoding="utf-8")
    assert main([*base, "--numerics", "pathldm"]) == 2
    assert "cache encoded in bfloat16, this run encodes in float32" in capsys.readouterr().err
    assert TextCache.open(out).meta["dtype"] == "bfloat16" and TextCache.open(out).captions == [SHORT]


def test_encode_text_cache_round_trip_truncation_and_resume(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{SHORT}\n{LONG}\n{SHORT}\nlow tumor; high til\n", encoding="utf-8")
    out = tmp_path / "cache"
    argv = ["encode-text", str(captions), "--text-encoder", "tiny-clip", "--out", str(out), "--batch-size", "2"]
    assert main(argv) == 0

    cache = TextCache.open(out)
    assert cache.captions == [SHORT, LONG, "low tumor; high til"]  # unique, first-seen order
    assert cache.meta["n_truncated"] == 1 and cache.meta["mode"] == "pathldm" and cache.meta["max_length"] == 154
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["produced"]["n_truncated"] == 1 and manifest["truncated"]["count"] == 1
    enc = load_text_encoder("tiny-clip", "pathldm", 154)
    assert cache.meta["fingerprint"] == enc.fingerprint and cache.embeddings.shape == (3, 154, 64)
    assert TextContract(**enc.contract()).model_dump() == {
        k: cache.meta[k] for k in ("encoder", "mode", "max_length", "dim", "fingerprint")
    }
    torch.testing.assert_close(
        cache.embeddings[cache.rows([LONG, SHORT])], enc.encode([LONG, SHORT]), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(cache.uncond, enc.encode([""]), atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="caption not in the text cache"):
        cache.row("never seen")

    # same settings: only the new caption is encoded, earlier rows stay where they were
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"caption": "high tumor; high til"}) + "\n" + json.dumps({"caption": SHORT}) + "\n")
    result = run_encode_text(EncodeTextConfig(captions=more, text_encoder="tiny-clip", out=out))
    assert result.n_new == 1 and result.n_reused == 1
    again = TextCache.open(out)
    assert len(again) == 4 and again.row("high tumor; high til") == 3 and again.row(SHORT) == cache.row(SHORT)
    torch.testing.assert_close(again.embeddings[:3], cache.embeddings, atol=0, rtol=0)


def test_encode_text_in_two_processes_writes_the_single_process_cache(tmp_path):
    """Batch b goes to process b mod 2; run here rank by rank (what `accelerate launch` runs at once,
    barrier between): rank 1 leaves its part, rank 0 encodes its own and merges; same cache as one process."""
    from safetensors.torch import load_file

    from histoldm.devices import Processes

    captions = tmp_path / "captions.txt"
    captions.write_text(
        "\n".join([SHORT, LONG, "a", "b", SHORT, "c", "d"]) + "\n", encoding="utf-8"
    )  # 6 unique: batches of 2 -> 3
    cfg = EncodeTextConfig(
        captions=captions, text_encoder="tiny-clip", out=tmp_path / "one", batch_size=2, device="cpu"
    )
    run_encode_text(cfg)
    two = cfg.model_copy(update={"out": tmp_path / "two"})
    ranks = [Processes(r, 2, torch.device("cpu"), lambda: None) for r in (0, 1)]
    with pytest.raises(
        UserError, match="rank1-of-2.safetensors: missing"
    ):  # main alone: process 1's batch is not there yet
        run_encode_text(two, ranks[0])
    assert run_encode_text(two, ranks[1]) is None  # its part written, the main process merges
    assert len(list((tmp_path / "two" / "parts").glob("*rank1-of-2*"))) == 1
    result = run_encode_text(two, ranks[0])  # reuses its own part from the first try, merges
    assert result.n_new == 6 and result.n_truncated == 1 and not (tmp_path / "two" / "parts").exists()
    a, b = (
        load_file(str(tmp_path / "one" / "embeddings.safetensors")),
        load_file(str(tmp_path / "two" / "embeddings.safetensors")),
    )
    assert torch.equal(a["embeddings"], b["embeddings"]) and torch.equal(a["uncond"], b["uncond"])
    for name in ("index.jsonl", "meta.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_encode_text_under_torchrun_with_two_cpu_processes(tmp_path):
    """The real launch: two gloo processes (torchrun sets WORLD_SIZE/RANK), one merged cache, equal to one process's."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join([SHORT, LONG, "a", "b", "c"]) + "\n", encoding="utf-8")
    args = ["encode-text", str(captions), "--text-encoder", "tiny-clip", "--batch-size", "2", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "histoldm.cli",
        *args,
        "--out",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("5 captions (5 new") == 1  # the main process reports, once
    a, b = (
        load_file(str(tmp_path / "one" / "embeddings.safetensors")),
        load_file(str(tmp_path / "two" / "embeddings.safetensors")),
    )
    assert torch.equal(a["embeddings"], b["embeddings"]) and not (tmp_path / "two" / "parts").exists()
    assert (tmp_path / "two" / "index.jsonl").read_bytes() == (tmp_path / "one" / "index.jsonl").read_bytes()


def test_cache_mismatch_is_an_error(tmp_path, capsys):
    captions = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"patch_id": ["a", "b", "c"], "caption": [SHORT, None, " "]}), captions)
    out = tmp_path / "cache"
    result = run_encode_text(EncodeTextConfig(captions=captions, text_encoder="tiny-clip", out=out, max_length=154))
    assert result.n_captions == 1 and result.n_skipped == 2  # an empty caption is not encoded as a real one
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert [(s["row"], s["reason"]) for s in skipped] == [(1, "caption is NoneType, not text"), (2, "empty caption")]
    cache = TextCache.open(out)
    with pytest.raises(
        UserError, match=r"cache made with tiny-clip/pathldm/154 .*asked for openai/clip-vit-base-patch32/pathldm/154"
    ):
        cache.check_compatible("openai/clip-vit-base-patch32", "pathldm", 154)
    with pytest.raises(UserError, match="different weights"):
        cache.check_compatible("tiny-clip", "pathldm", 154, fingerprint="0" * 64)
    cache.check_compatible("tiny-clip", "pathldm", 154, load_text_encoder("tiny-clip").fingerprint)
    # re-running into the folder with another mode is refused, one line naming the folder
    capsys.readouterr()
    assert (
        main(["encode-text", str(captions), "--text-encoder", "tiny-clip", "--mode", "chunks", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert str(out) in err and "cache made with tiny-clip/pathldm/154" in err and len(err.strip().splitlines()) == 1


def test_read_captions_rejects_bad_inputs(tmp_path):
    bad = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x"]}), bad)
    with pytest.raises(UserError, match=r"lacks column\(s\) caption"):
        read_captions(bad)
    with pytest.raises(UserError, match="expected a .parquet"):
        (tmp_path / "c.csv").write_text("caption\nx\n")
        read_captions(tmp_path / "c.csv")
    with pytest.raises(UserError, match="not a text-embedding cache"):
        TextCache.open(tmp_path)


@pytest.mark.parametrize("offline_env", [True, False])
def test_hub_encoder_fails_fast_offline_and_names_the_offline_ones(tmp_path, monkeypatch, offline_env):
    """vinid/plip on a machine without the hub used to spend ~30 s in retries before failing."""
    import socket
    import time

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no variable set, but the hub's endpoint does not answer (a closed local port)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"vinid/plip: not in the local Hugging Face cache .*minilm.*tiny-clip"):
        load_text_encoder("vinid/plip")
    assert time.monotonic() - started < 10


def test_encode_text_without_mode_takes_the_encoders_own(tmp_path, capsys):
    """No --mode: minilm (the one real offline encoder) encodes in truncate, its only mode; a CLIP model in
    PathLDM's; a mode the encoder cannot run is still refused."""
    captions = tmp_path / "captions.txt"
    captions.write_text(f"{SHORT}\n{LONG}\n", encoding="utf-8")
    assert (
        main(
            [
                "encode-text",
                str(captions),
                "--text-encoder",
                "minilm",
                "--max-length",
                "32",
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert (meta["mode"], meta["max_length"], meta["dim"], meta["n_truncated"]) == ("truncate", 32, 384, 1)
    assert main(["encode-text", str(captions), "--text-encoder", "tiny-clip", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["mode"] == "pathldm"
    assert (
        main(
            ["encode-text", str(captions), "--text-encoder", "minilm", "--mode", "chunks", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "supports only mode truncate, not chunks" in capsys.readouterr().err

"""Checkpoints: one weights-only file that round-trips exactly, tolerates new config fields, fails clearly."""
import dataclasses
import os

import pytest
import torch

from transformer_course import checkpoints, train as train_cli
from transformer_course.checkpoints import FORMAT, known_checkpoints, load_checkpoint, save_checkpoint
from transformer_course.model import GPT, GPTConfig
from transformer_course.tokenization import BPETokenizer, load_course_tokenizer
from transformer_course.training import TrainConfig, train


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train("I like playing video games. We like games. " * 20, vocab_size=280)


def small_model(tokenizer, **kw):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=2, n_heads=2, d_model=32, **kw)
    return GPT(config)


def logits_of(model, vocab_size):
    idx = torch.randint(vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("flavour", ["gpt2_like", "llama_like"])
def test_round_trip_gives_identical_logits(tmp_path, tokenizer, flavour):
    torch.manual_seed(0)
    config = getattr(GPTConfig, flavour)(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=2,
                                         n_heads=4, n_kv_heads=2, d_model=32)
    model = GPT(config).eval()
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, tokenizer, steps=7, val_loss=1.25, command="test")
    assert sorted(os.listdir(tmp_path / "sub")) == ["m.pt"]  # one file, no temporary left behind
    loaded, tok, meta = load_checkpoint(path)
    assert loaded.config == config and not loaded.training
    assert torch.equal(logits_of(loaded, tokenizer.vocab_size), logits_of(model, tokenizer.vocab_size))
    text = "I like playing video games<|endoftext|>"
    assert tok.encode(text) == tokenizer.encode(text) and tok.to_dict() == tokenizer.to_dict()
    assert meta == {"steps": 7, "val_loss": 1.25, "command": "test", "torch_version": torch.__version__}


def test_file_is_a_plain_weights_only_dict(tmp_path, tokenizer):
    path = save_checkpoint(tmp_path / "m.pt", small_model(tokenizer), tokenizer, history=[{"step": 0, "lr": 0.1}])
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"format", "config", "state_dict", "tokenizer", "meta"}
    assert payload["format"] == FORMAT == "transformer_course/1"
    assert all(isinstance(t, torch.Tensor) for t in payload["state_dict"].values())


def test_loading_fills_config_fields_added_later(tmp_path, tokenizer):
    model = small_model(tokenizer)
    path = save_checkpoint(tmp_path / "old.pt", model, tokenizer)
    payload = torch.load(path, weights_only=True)
    for newer_field in ("attn_impl", "layer_pattern", "attention_window"):
        del payload["config"][newer_field]  # as if written before these fields existed
    torch.save(payload, path)
    loaded, _, _ = load_checkpoint(path)
    defaults = GPTConfig()
    assert (loaded.config.attn_impl, loaded.config.layer_pattern, loaded.config.attention_window) == (
        defaults.attn_impl, defaults.layer_pattern, defaults.attention_window)
    assert torch.equal(logits_of(loaded, tokenizer.vocab_size), logits_of(model.eval(), tokenizer.vocab_size))


def test_bare_name_resolves_to_shipped_folder(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(checkpoints, "CHECKPOINT_DIR", tmp_path)
    save_checkpoint(tmp_path / "demo.pt", small_model(tokenizer), tokenizer)
    assert known_checkpoints() == ["demo"]
    model, _, _ = load_checkpoint("demo")
    assert isinstance(model, GPT)
    with pytest.raises(FileNotFoundError, match=r"no shipped checkpoint named 'nope'.*known checkpoints: 'demo'"):
        load_checkpoint("nope")


def test_clear_errors(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*missing.pt.*known checkpoints"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a transformer_course/1 checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="meta where"):
        save_checkpoint(tmp_path / "m.pt", small_model(tokenizer), tokenizer, where=tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        save_checkpoint(tmp_path / "m.pt", small_model(tokenizer), "gpt2")
    with pytest.raises(ValueError, match="model"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 2), tokenizer)


def test_interrupted_save_keeps_the_old_file(tmp_path, tokenizer, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", small_model(tokenizer), tokenizer, steps=1)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **kw):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_model(tokenizer), tokenizer, steps=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]


def test_train_saves_at_evaluations_and_on_interrupt(tmp_path, tokenizer):
    ids = torch.tensor(tokenizer.encode("I like playing video games. We like games. " * 30))
    model = small_model(tokenizer)
    cfg = TrainConfig(steps=4, batch_size=2, block_size=16, warmup_steps=1, eval_interval=2, eval_batches=1)
    path = tmp_path / "run.pt"
    history = train(model, ids, ids, cfg, progress=False, checkpoint_path=path, tokenizer=tokenizer,
                    meta={"command": "pytest"})
    _, _, meta = load_checkpoint(path)
    assert meta["steps"] == 4 and meta["val_loss"] == history[-1]["val_loss"] and meta["command"] == "pytest"
    assert meta["history"] == history

    calls, forward = [], model.forward

    def interrupted_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # 2 evaluation batches at step 0, then 3 updates
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    model.forward = interrupted_forward
    with pytest.raises(KeyboardInterrupt):
        train(model, ids, ids, dataclasses.replace(cfg, steps=10), progress=False, checkpoint_path=path,
              tokenizer=tokenizer)
    _, _, meta = load_checkpoint(path)
    assert meta["interrupted"] is True and meta["steps"] == 2 and meta["val_loss"] is None


def test_cli_trains_and_saves(tmp_path, tokenizer, monkeypatch, capsys):
    ids = torch.tensor(tokenizer.encode("I like playing video games. We like games. " * 60))
    monkeypatch.setattr(train_cli, "course_data", lambda tok: (ids, ids))
    monkeypatch.setattr(train_cli, "load_course_tokenizer", lambda: tokenizer)
    monkeypatch.setitem(train_cli.CONFIGS, "test", (
        GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=16),
        TrainConfig(steps=100, batch_size=2, block_size=16, warmup_steps=10, eval_interval=50, eval_batches=1)))
    out = tmp_path / "test.pt"
    assert train_cli.main(["--config", "test", "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "trained 3 steps" in printed and "val loss" in printed and str(out) in printed
    model, _, meta = load_checkpoint(out)
    assert meta["steps"] == 3 and meta["config_name"] == "test"
    assert meta["command"] == f"python -m transformer_course.train --config test --steps 3 --out {out} --no-progress"
    assert meta["train_config"]["steps"] == 3 and meta["train_config"]["warmup_steps"] == 3
    assert model.config == train_cli.CONFIGS["test"][0]
    with pytest.raises(SystemExit):
        train_cli.main(["--config", "no-such-config"])


def test_cli_results_mode_writes_losses_not_weights(tmp_path, tokenizer, monkeypatch, capsys):
    ids = torch.tensor(tokenizer.encode("I like playing video games. We like games. " * 60))
    monkeypatch.setattr(train_cli, "course_data", lambda tok: (ids, ids))
    monkeypatch.setattr(train_cli, "load_course_tokenizer", lambda: tokenizer)
    monkeypatch.setattr(train_cli, "RESULTS_DIR", tmp_path)
    monkeypatch.setitem(train_cli.CONFIGS, "test", (
        GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layers=1, n_heads=2, d_model=16),
        TrainConfig(steps=100, batch_size=2, block_size=16, warmup_steps=10, eval_interval=50, eval_batches=1)))
    runs = {}
    for seed in (1, 1, 2):
        assert train_cli.main(["--config", "test", "--steps", "3", "--seed", str(seed), "--results", "--no-progress"]) == 0
        runs.setdefault(seed, []).append(train_cli.load_results(f"test-seed{seed}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-seed1.json", "test-seed2.json"]  # no weights
    first = runs[1][0]
    assert first["train_config"]["seed"] == 1 and first["steps"] == 3 and first["model_config"]["n_layers"] == 1
    assert first["command"].endswith("--seed 1 --results --no-progress")
    assert [r["val_loss"] for r in runs[1][0]["history"]] == [r["val_loss"] for r in runs[1][1]["history"]]
    assert runs[2][0]["val_loss"] != first["val_loss"]  # another seed, another run
    with pytest.raises(ValueError, match=r"name must be one of the shipped results \['test-seed1', 'test-seed2'\]"):
        train_cli.load_results("test-seed3")


def test_shipped_tiny_checkpoint():
    path = checkpoints.CHECKPOINT_DIR / "tiny.pt"
    assert path.stat().st_size < 10e6
    model, tok, meta = load_checkpoint("tiny")
    model_config, _ = train_cli.CONFIGS["tiny"]
    assert model.config == model_config  # what `python -m transformer_course.train --config tiny` makes
    assert tok.to_dict() == load_course_tokenizer().to_dict()
    assert meta["command"] == "python -m transformer_course.train --config tiny"
    assert meta["val_loss"] < 2.5
    cfg = model.config
    assert (cfg.positional, cfg.norm, cfg.ffn, cfg.tie_weights) == ("learned", "layernorm", "gelu", True)
    assert (cfg.vocab_size, cfg.context_length, cfg.n_layers, cfg.n_heads, cfg.d_model) == (1024, 128, 4, 4, 128)


def test_shipped_tiny_llama_is_the_llama_twin_of_tiny():
    """Same size, data and schedule as `tiny`; RoPE, RMSNorm, SwiGLU, 2 KV heads, untied head."""
    model, _, meta = load_checkpoint("tiny-llama")
    tiny_config, tiny_schedule = train_cli.CONFIGS["tiny"]
    assert model.config == train_cli.CONFIGS["tiny-llama"][0]
    assert meta["command"] == "python -m transformer_course.train --config tiny-llama --no-progress"
    assert meta["train_config"] == tiny_schedule.to_dict() | {"device": "cpu"}
    cfg = model.config
    assert (cfg.positional, cfg.norm, cfg.ffn, cfg.tie_weights, cfg.h_kv) == ("rope", "rmsnorm", "swiglu", False, 2)
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.context_length) == (tiny_config.n_layers, tiny_config.n_heads,
                                                                            tiny_config.d_model, tiny_config.context_length)
    assert meta["val_loss"] < 1.5  # it learned the corpus (ln V = 6.93 at the start)


def test_shipped_checkpoints_stay_within_20_mb():
    assert sum(p.stat().st_size for p in checkpoints.CHECKPOINT_DIR.glob("*.pt")) <= 20e6


def test_uptraining_recipes_start_from_tiny(tmp_path, monkeypatch, capsys):
    """tiny-mqa / tiny-control continue the shipped tiny: converted to 1 key/value head, or copied as it is."""
    monkeypatch.setattr(train_cli, "RESULTS_DIR", tmp_path)
    tiny, _, _ = load_checkpoint("tiny")
    for name, h_kv in (("tiny-mqa", 1), ("tiny-control", 4)):
        assert train_cli.main(["--config", name, "--steps", "1", "--seed", "3", "--results", "--no-progress"]) == 0
        assert f"starts from tiny" in capsys.readouterr().out
        record = train_cli.load_results(f"{name}-seed3")
        assert record["source"] == "tiny" and record["n_kv_heads"] == h_kv == GPTConfig.from_dict(record["model_config"]).h_kv
        assert record["train_config"]["seed"] == 3 and [row["step"] for row in record["history"]] == [0, 1]
        assert set(record["held_out_loss"]) == {"source", "converted", "final"}
        if h_kv == 4:  # the control is not converted: the same model before and after "conversion"
            assert record["held_out_loss"]["source"] == record["held_out_loss"]["converted"]
            assert record["source_val_loss"] == record["converted_val_loss"]
        else:  # mean-pooling the four heads changes the function
            assert record["converted_val_loss"] > record["source_val_loss"] + 0.1
    assert list(tmp_path.glob("*.pt")) == []
    model_config, _ = train_cli.CONFIGS["tiny-mqa"]
    assert model_config == dataclasses.replace(tiny.config, n_kv_heads=1)


def test_train_command_reproduces_the_shipped_tiny_mqa(tmp_path):
    """tiny-mqa.pt was made by the former `python -m transformer_course.gqa --uptrain --n-kv-heads 1`; the
    one training command's recipe must give the same model (weights and losses, up to float rounding)."""
    out = tmp_path / "tiny-mqa.pt"
    assert train_cli.main(["--config", "tiny-mqa", "--out", str(out), "--no-progress"]) == 0
    shipped, _, shipped_meta = load_checkpoint("tiny-mqa")
    remade, _, meta = load_checkpoint(out)
    assert shipped_meta["command"] == "python -m transformer_course.gqa --uptrain --n-kv-heads 1"
    assert remade.config == shipped.config and meta["steps"] == shipped_meta["steps"] == 150
    assert {**meta["train_config"], "device": None} == shipped_meta["train_config"]  # the CLI records "cpu"
    for key in ("source_val_loss", "converted_val_loss", "val_loss"):
        assert meta[key] == pytest.approx(shipped_meta[key], abs=1e-3), key
    for (name, a), b in zip(remade.state_dict().items(), shipped.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-3 * max(1.0, b.abs().max().item()), rtol=1e-3, msg=name)

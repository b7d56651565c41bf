"""transformer_course.probe: pooling, cached features, the linear probe, fine-tuning, their refusals."""
import pytest
import torch
import torch.nn.functional as F

from transformer_course import probe
from transformer_course.labelled import POS_TAGS, TOPICS, labelled_splits, to_batch
from transformer_course.model import GPT, GPTConfig


def small_gpt(seed=0):
    torch.manual_seed(seed)
    config = GPTConfig.gpt2_like(vocab_size=1024, context_length=64, n_layers=2, n_heads=2, d_model=16)
    model = GPT(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def sentences():
    return list(labelled_splits(n_train=20, n_val=5, n_test=5, seed=3).train)


def test_pool_last_and_mean_skip_padding_on_either_side():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    last = probe.pool(hidden, mask, "last")
    mean = probe.pool(hidden, mask, "mean")
    for b, real in enumerate([[0, 1], [2, 3, 4], [0, 1, 2, 3, 4]]):
        assert torch.equal(last[b], hidden[b, real[-1]])
        torch.testing.assert_close(mean[b], hidden[b, real].mean(0))
    # padding values never matter
    noisy = hidden.masked_fill(~mask[..., None], 1e6)
    assert torch.equal(probe.pool(noisy, mask, "last"), last)
    torch.testing.assert_close(probe.pool(noisy, mask, "mean"), mean)


def test_layer_features_equal_the_model_row_by_row(sentences):
    model = small_gpt()
    batch = to_batch(sentences)
    states = probe.layer_features(model, batch.ids, batch.padding_mask, chunk=7)
    assert states.shape == (model.config.n_layers + 2, len(sentences), batch.ids.shape[1], 16)
    assert (states[:, ~batch.padding_mask] == 0).all()
    for b in (0, 5, 19):
        n = int(batch.padding_mask[b].sum())
        with torch.no_grad():
            alone = model.features(batch.ids[b:b + 1, :n])[0]  # the row unpadded, on its own
        torch.testing.assert_close(states[-1, b, :n], alone, atol=1e-5, rtol=0)
    assert not model.training


def test_layer_features_refuse_left_padding(sentences):
    batch = to_batch(sentences, side="left")
    with pytest.raises(ValueError, match="right padding"):
        probe.layer_features(small_gpt(), batch.ids, batch.padding_mask)


def test_fit_linear_separates_separable_data_and_follows_its_seed():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 4
    y = torch.randint(0, 4, (400,), generator=g)
    x = centres[y] + torch.randn(400, 8, generator=g)
    layer = probe.fit_linear(x, y, 4, steps=200)
    with torch.no_grad():
        assert probe.accuracy(layer(x), y) > 0.95
        again = probe.fit_linear(x, y, 4, steps=200)
        assert torch.equal(layer.weight, again.weight)
        other = probe.fit_linear(x, y, 4, steps=200, seed=1)
        assert not torch.equal(layer.weight, other.weight)


def test_fit_linear_early_stopping_returns_the_best_validation_check():
    # noisy labels: training long overfits, so validation accuracy peaks and the best check is kept
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    x = centres[y] + torch.randn(60, 20, generator=g) * 2
    y_val = torch.randint(0, 3, (300,), generator=g)
    x_val = centres[y_val] + torch.randn(300, 20, generator=g) * 2
    with torch.no_grad():
        stopped = probe.fit_linear(x, y, 3, val=(x_val, y_val), steps=300, check_every=5, patience=2)
        scores = []
        for steps in range(5, 305, 5):  # the same run, stopped at every check
            scores.append(probe.accuracy(probe.fit_linear(x, y, 3, steps=steps, check_every=5)(x_val), y_val))
        got = probe.accuracy(stopped(x_val), y_val)
    best, bad = -1.0, 0  # the rule of the docstring, replayed on the scores of each check
    for score in scores:
        if score > best:
            best, bad = score, 0
        else:
            bad += 1
            if bad >= 2:
                break
    assert got == best
    assert got >= scores[-1]


def test_accuracy_and_majority_skip_ignored_labels():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])  # predicts 0, 1, 0
    labels = torch.tensor([[0, 0, -100]])
    assert probe.accuracy(logits, labels) == 0.5
    top, share = probe.majority(torch.tensor([1, 1, 0, -100, -100, -100]), torch.tensor([1, 0, -100, 1]))
    assert top == 1 and share == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not -100"):
        probe.accuracy(logits, torch.full((1, 3), -100))


@pytest.mark.parametrize("task, pooling", [("topic", "last"), ("topic", "mean"), ("pos", "last")])
def test_finetune_lowers_the_loss_and_trains_the_backbone(sentences, task, pooling):
    model = probe.Classifier(small_gpt(), task, pooling)
    batch = to_batch(sentences, subtokens="last")
    before = model.backbone.tok_emb.weight.detach().clone()
    losses = probe.finetune(model, batch, steps=30, batch_size=8, lr=3e-3)
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert not torch.equal(before, model.backbone.tok_emb.weight)
    acc = probe.evaluate(model, batch)
    assert 0 <= acc <= 1 and model.training
    n_out = len(TOPICS) if task == "topic" else len(POS_TAGS)
    with torch.no_grad():
        out = model.eval()(batch.ids, batch.padding_mask)
    assert out.shape[-1] == n_out


def test_classifier_mean_pooling_uses_the_head_on_the_mean(sentences):
    model = probe.Classifier(small_gpt(), "topic", "mean").eval()
    batch = to_batch(sentences[:4])
    with torch.no_grad():
        hidden = model.backbone.features(batch.ids, padding_mask=batch.padding_mask)
        mean = (hidden * batch.padding_mask[..., None]).sum(1) / batch.padding_mask.sum(1, keepdim=True)
        torch.testing.assert_close(model(batch.ids, batch.padding_mask), F.linear(mean, model.head.score.weight,
                                                                                 model.head.score.bias))


@pytest.mark.parametrize("call, match", [
    (lambda: probe.pool(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)), "hidden"),
    (lambda: probe.pool(torch.zeros(2, 3, 4), torch.ones(2, 3)), "padding_mask"),
    (lambda: probe.pool(torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), "max"), "how"),
    (lambda: probe.fit_linear(torch.zeros(4, 2), torch.tensor([0, 1, 2, 5]), 3), "y must hold labels"),
    (lambda: probe.fit_linear(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 3, steps=0), "steps"),
    (lambda: probe.fit_linear(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 3, patience=0), "patience"),
    (lambda: probe.fit_linear(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 3, val=torch.zeros(2)), "val"),
    (lambda: probe.fit_linear(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 3,
                              val=(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))), "val"),
    (lambda: probe.token_rows(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)), "tags"),
    (lambda: probe.Classifier("gpt", "topic"), "backbone"),
    (lambda: probe.Classifier(small_gpt(), "ner"), "task"),
    (lambda: probe.layer_features(small_gpt(), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)), "ids"),
])
def test_refusals_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_shipped_results_record_their_command():
    results = probe.load_results()
    assert results["command"].startswith("python -m transformer_course.probe --finetune --results")
    runs = {(r["start"], r["task"], r["pooling"]) for r in results["runs"]}
    assert runs == {(s, "topic", "last") for s in ("tiny", "random")} | {
        (s, "topic", "mean") for s in ("tiny", "random")} | {(s, "pos", None) for s in ("tiny", "random")}
    assert all(0 <= r["test_accuracy"] <= 1 for r in results["runs"])
    assert results["n_train"] == probe.SIZES["n_train"] and results["n_test"] == probe.SIZES["n_test"]

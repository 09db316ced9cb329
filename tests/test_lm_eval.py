"""lm-evaluation-harness adapter: exact AR log-likelihoods, the diffusion conditional ELBO, the local
task end to end (offline), and ``crossover eval`` on trained checkpoints."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from analysis.table import read_rows  # noqa: E402
from data import get_tokenizer, load_corpus  # noqa: E402
from experiments import downstream  # noqa: E402
from experiments import lm_eval_model as lem  # noqa: E402
from experiments.checkpoint import LoadedRun  # noqa: E402
from experiments.tasks import TASKS_DIR, code_mc_items  # noqa: E402
from models import ModelConfig, Transformer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
EOD, MASK = 2, 1


@pytest.fixture(scope="module")
def tokenizer(corpus_spec):
    return get_tokenizer(load_corpus(corpus_spec), 320)


def loaded(tokenizer, objective: str, seq_len: int = 64, seed: int = 0) -> LoadedRun:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(tokenizer), seq_len=seq_len, n_layer=2, n_head=2, d_model=32,
                      causal=objective == "ar")
    return LoadedRun(Transformer(cfg).eval(), objective, tokenizer, {}, 7, 2, run_id=f"{objective}-run")


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


class Uniform(torch.nn.Module):
    """Logits all zero: every token has probability 1 / V."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config, self.w = config, torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.config.vocab_size)


@torch.no_grad()
def exact_nll(model, ids: list[int], n_cont: int) -> float:
    """Our own AR NLL of the last ``n_cont`` tokens of ``ids`` given [EOD] + the tokens before."""
    x = torch.tensor([ids])
    inp = torch.cat([torch.full_like(x[:, :1], EOD), x[:, :-1]], dim=1)[:, -model.config.seq_len:]
    nll = F.cross_entropy(model(inp)[0].float(), x[0, -inp.shape[1]:], reduction="none")
    return nll[-n_cont:].sum().item()


# --------------------------------------------------------------------------- AR
def test_ar_loglikelihood_equals_our_exact_nll(tokenizer):
    run = loaded(tokenizer, "ar")
    lm = lem.CrossoverLM(run, batch_size=3)
    long = "x = 1\n" * 40  # longer than the window: the context is cut from the left
    args = [("def f(x):", " return x"), ("alpha", " beta_1 = x * 2"), ("", "def g():"), (long, " y = 2"),
            ("if x", " is None:")]
    out = lm.loglikelihood(requests("loglikelihood", args))
    for (ctx, cont), (ll, greedy) in zip(args, out):
        whole = tokenizer.encode(ctx + cont, add_special_tokens=False)
        ctx = ctx.rstrip()  # lm-eval moves the context's trailing whitespace into the continuation
        n_cont = len(whole) - len(tokenizer.encode(ctx, add_special_tokens=False)) if ctx else len(whole)
        assert abs(-ll - exact_nll(run.model, whole, n_cont)) < 1e-4
        assert isinstance(greedy, bool)
    single = lem.CrossoverLM(run, batch_size=1).loglikelihood(requests("loglikelihood", args))
    assert [round(a, 5) for a, _ in single] == [round(a, 5) for a, _ in out]  # padding changes nothing


def test_ar_rolling_loglikelihood_is_the_exact_nll_of_the_text(tokenizer):
    run = loaded(tokenizer, "ar", seq_len=32)
    lm = lem.CrossoverLM(run)
    short, long = "def f(x):\n    return x\n", "def f(x):\n    return x * 2 + 1\n" * 6
    ll_short, ll_long = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(short,), (long,)]))
    ids = tokenizer.encode(short, add_special_tokens=False)
    assert abs(-ll_short - exact_nll(run.model, ids, len(ids))) < 1e-4
    ids = tokenizer.encode(long, add_special_tokens=False)
    assert len(ids) > 32
    nll, T = 0.0, 32  # disjoint windows of T predictions, each conditioned on what fills its input
    for start in range(0, len(ids), T):
        window = ids[start : start + T]
        prev = [EOD] if start == 0 else ids[start + len(window) - T - 1 : start]  # one token, more for the last
        inp = torch.tensor([prev + window[:-1]])
        nll += F.cross_entropy(run.model(inp)[0, -len(window):], torch.tensor(window), reduction="sum").item()
    assert abs(-ll_long - nll) < 1e-3


# --------------------------------------------------------------------------- diffusion
def test_diffusion_elbo_with_uniform_logits_is_log_v_per_token(tokenizer):
    run = loaded(tokenizer, "diffusion")
    run.model = Uniform(run.model.config)
    lm = lem.CrossoverLM(run, mc_samples=8)
    args = [("def f(x):", " return x + 1"), ("", "alpha beta")]
    out = lm.loglikelihood(requests("loglikelihood", args))
    V = run.model.config.vocab_size
    for (ll, _), est in zip(out, lm.mc_estimates):
        assert est.tokens > 1
        assert abs(-ll - est.tokens * math.log(V)) <= max(3 * est.stderr, 1e-5)  # float32 log-softmax
    assert lm.mc_summary()["mc_samples"] == 8


def test_diffusion_elbo_of_one_token_is_the_exact_masked_prediction(tokenizer):
    run = loaded(tokenizer, "diffusion")
    context, target = [EOD] + tokenizer.encode("def f(x):", add_special_tokens=False), 42
    est = lem.diffusion_elbo(run.model, context, [target], mask_id=MASK, mc_samples=4,
                             generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = run.model(torch.tensor([context + [MASK]]))[0, -1].log_softmax(-1)
    assert abs(est.loglikelihood - logp[target].item()) < 1e-5 and est.stderr == 0


def test_diffusion_elbo_is_unbiased_and_masks_only_the_continuation(tokenizer):
    """L = 2: the exact expectation of the estimator, enumerated (l = 1 with weight 2 on either token,
    or l = 2 with weight 1, each count with probability 1/2), lies within 4 standard errors."""
    run = loaded(tokenizer, "diffusion")
    context, cont = [EOD] + tokenizer.encode("x = y", add_special_tokens=False), [70, 80]
    seen = []
    model = run.model

    class Spy(torch.nn.Module):
        config = model.config

        def forward(self, idx):
            seen.append(idx.clone())
            return model(idx)

    est = lem.diffusion_elbo(Spy(), context, cont, mask_id=MASK, mc_samples=400,
                             generator=torch.Generator().manual_seed(1), batch_size=64)
    assert all((x[:, : len(context)] == torch.tensor(context)).all() for x in seen)
    with torch.no_grad():
        def ce(masked):  # summed CE of the masked continuation positions
            x = torch.tensor([context + [MASK if m else c for m, c in zip(masked, cont)]])
            logp = model(x)[0, len(context):].log_softmax(-1)
            return -sum(logp[j, cont[j]].item() for j in range(2) if masked[j])
        expected = 0.5 * (2 * ce([1, 0]) + 2 * ce([0, 1])) / 2 + 0.5 * ce([1, 1])
    assert 0 < est.stderr < 0.5
    assert abs(-est.loglikelihood - expected) < 4 * est.stderr


def test_objectives_without_scoring_are_refused(tokenizer):
    run = loaded(tokenizer, "diffusion")
    run.objective = "block_diffusion"
    with pytest.raises(lem.EvalError, match="block_diffusion"):
        lem.CrossoverLM(run)


def test_diffusion_scores_do_not_depend_on_order(tokenizer):
    lm = lem.CrossoverLM(loaded(tokenizer, "diffusion"), mc_samples=4)
    args = [("def f(x):", " return x"), ("alpha", " beta")]
    a = lm.loglikelihood(requests("loglikelihood", args))
    b = lm.loglikelihood(requests("loglikelihood", args[::-1]))
    assert a == b[::-1]


# --------------------------------------------------------------------------- generation
def test_generate_until_follows_our_samplers(tokenizer):
    from models.sampling import LogitsProcessor, generate

    run = loaded(tokenizer, "ar")
    lm = lem.CrossoverLM(run)
    text = lm.generate_until(requests("generate_until", [("def f(", {"until": ["\n\n"], "max_gen_toks": 10})]))[0]
    prompt = torch.tensor([tokenizer.encode("def f(", add_special_tokens=False)])
    ours = generate(run.model, prompt, 10, processor=LogitsProcessor((MASK, 0), 0.0),
                    start_id=EOD).tokens[0, prompt.shape[1]:].tolist()
    ours = ours[: ours.index(EOD)] if EOD in ours else ours
    assert text == lem.cut_at_stops(tokenizer.decode(ours), ["\n\n"])
    diffusion = lem.CrossoverLM(loaded(tokenizer, "diffusion"), sampler="remask")
    gen = [("x = ", {"until": ["\n"], "max_gen_toks": 8})]
    first = diffusion.generate_until(requests("generate_until", gen))[0]
    assert first == diffusion.generate_until(requests("generate_until", gen))[0] and "\n" not in first


def test_split_request_and_generation_length_fit_the_window():
    pieces = lem.split_request(list(range(10)), list(range(10, 50)), 16)  # continuation longer than the window
    assert [t for _, c in pieces for t in c] == list(range(10, 50))
    assert all(len(c) + len(x) <= 16 and (c + x) == list(range(c[0] if c else x[0], x[-1] + 1)) for c, x in pieces)
    assert lem.split_request([1, 2, 3], [4, 5], 4) == [([2, 3], [4, 5])]
    assert lem.generation_length(100, 256, 64) == (32, 32) and lem.generation_length(5, 8, 64) == (8, 5)


# --------------------------------------------------------------------------- the local task
def test_local_task_items_are_well_formed():
    rows = [json.loads(line) for line in (TASKS_DIR / "crossover_code_mc.jsonl").read_text().splitlines()]
    assert len(rows) == 200 and {r["label"] for r in rows} == {0, 1, 2, 3}
    for r in rows:
        true = r["choices"][r["label"]].strip()
        others = [c.strip() for i, c in enumerate(r["choices"]) if i != r["label"]]
        assert len(set(others)) == 3 and all(true not in o and o not in true for o in others)
    docs = [(f"d{i}.py", f"def func_{i}(a, b):\n    value_{i} = a * {i} + b - compute(a, b)\n") for i in range(12)]
    assert code_mc_items(docs, n_items=5, seed=1) == code_mc_items(docs, n_items=5, seed=1)


def test_local_task_runs_end_to_end_through_simple_evaluate(tokenizer, tmp_path):
    run = loaded(tokenizer, "ar")
    result = downstream.evaluate_downstream(run, ["crossover_code_mc"], limit=6, batch_size=8)
    metrics = result.results["results"]["crossover_code_mc"]
    assert 0 <= metrics["acc,none"] <= 1 and metrics["acc_stderr,none"] > 0
    assert result.results["n-samples"]["crossover_code_mc"]["effective"] == 6
    rows = {r["metric"]: r for r in result.rows}
    assert set(rows) == {"acc", "acc_norm"} and rows["acc"]["epochs"] == 3 and rows["acc"]["run_id"] == "ar-run"
    table = tmp_path / "downstream.csv"
    downstream.write_downstream(table, result.rows)
    downstream.write_downstream(table, [{**result.rows[0], "value": 0.5}])  # same key: replaced
    written = read_rows(table)
    assert len(written) == 2 and {r["metric"]: float(r["value"]) for r in written}["acc"] == 0.5


# --------------------------------------------------------------------------- crossover eval on trained runs
@pytest.fixture(scope="module")
def trained(corpus_spec, tmp_path_factory):
    from experiments.cli import main

    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for objective in ("ar", "diffusion"):
        out = root / objective
        assert main(["train", "--objective", objective, "--unique-tokens", "1200", "--epochs", "1", "--corpus",
                     corpus_spec, "--out", str(out), "--model", "tiny", "--model-arg", "seq_len=64",
                     "--vocab-size", "320", "--batch-size", "8", "--val-tokens", "256", "--no-progress",
                     "--threads", "1"]) == 0
        runs[objective] = out
    return runs


def test_crossover_eval_prints_accuracy_for_both_objectives(trained, capsys, tmp_path):
    from experiments.cli import main

    for objective, run in trained.items():
        assert main(["eval", str(run), "--tasks", "crossover_code_mc", "--limit", "8", "--mc-samples", "4"]) == 0
        out = capsys.readouterr().out
        assert "crossover_code_mc" in out and "acc" in out and "±" in out, out
        rows = read_rows(run / "downstream.csv")
        assert {r["metric"] for r in rows} == {"acc", "acc_norm"} and {r["objective"] for r in rows} == {objective}
        assert all(r["epochs"] == "1" and r["run_id"] == objective for r in rows)
        assert (rows[0]["mc_samples"] == "4") == (objective == "diffusion")
    assert main(["export", str(trained["ar"]), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "hf"), "--tasks", "crossover_code_mc", "--limit", "8"]) == 0
    exported = {r["metric"]: r["value"] for r in read_rows(tmp_path / "hf" / "downstream.csv")}
    assert exported == {r["metric"]: r["value"] for r in read_rows(trained["ar"] / "downstream.csv")}
    assert main(["eval", str(trained["ar"]), "--tasks", "nope_task", "--limit", "2"]) == 2
    assert "unknown lm-eval task(s) nope_task" in capsys.readouterr().err

"""teacher_context: demonstrations, documents and conversations as what only the teacher
reads; their files' errors at file:line; a fit from a log trains on the logged answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from engrain.cli.main import cli
from engrain.engine.models import load_tokenizer
from engrain.spec.behavior import load_behavior
from engrain.spec.contexts import Retriever, chunk_text, read_conversations, read_demonstrations, read_documents
from engrain.spec.files import PromptFileError
from engrain.spec.load import SpecError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def convo(*turns) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


# --- the readers -----------------------------------------------------------------------------

def test_chunks_pack_paragraphs_and_cut_long_ones_at_words():
    text = "aaa bbb\n\nccc\n\n" + " ".join(["word"] * 10)     # a 49-character paragraph
    assert chunk_text(text, 12) == ["aaa bbb\n\nccc", "word word", "word word", "word word", "word word",
                                    "word word"]
    assert chunk_text(text, 100) == ["aaa bbb\n\nccc\n\n" + " ".join(["word"] * 10)]
    assert all(len(c) <= 12 for c in chunk_text(text, 12))


def test_the_closest_text_wins_and_an_excluded_one_never_does():
    r = Retriever(["refunds within 120 days", "rate limit 240 requests", "currencies EUR GBP NOK"])
    assert r.top("how many requests per minute", 1) == [1]
    assert r.top("refund window days", 2)[0] == 0
    assert r.top("refund window days", 1, exclude=lambda i: i == 0) != [0]


def test_demonstrations_file_errors_name_the_line(tmp_path):
    good = {"prompt": "q", "answer": "a"}
    f = write(tmp_path / "d.jsonl", lines(good, "", "{not json", good))
    with pytest.raises(PromptFileError) as e:
        read_demonstrations(f)
    assert e.value.line == 3
    f = write(tmp_path / "d.jsonl", lines(good, {"prompt": "q"}))
    with pytest.raises(PromptFileError, match='"answer"') as e:
        read_demonstrations(f)
    assert e.value.line == 2
    assert [d.line for d in read_demonstrations(write(tmp_path / "d.jsonl", lines(good, "", good)))] == [1, 3]


def test_documents_are_bounded_and_an_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PromptFileError, match="no .txt or .md files"):
        read_documents(tmp_path / "empty", 600, 10_000, 100)
    folder = tmp_path / "docs"
    write(folder / "b.md", "second file")
    write(folder / "a.txt", "first\n\nparagraph two")
    write(folder / "skip.pdf", "not read")
    chunks = read_documents(folder, 600, 10_000, 100)
    assert [(c.source, c.text) for c in chunks] == [("a.txt", "first\n\nparagraph two"), ("b.md", "second file")]
    with pytest.raises(PromptFileError, match="over the limit of 10"):
        read_documents(folder, 600, 10, 100)
    with pytest.raises(PromptFileError, match="more than 1 chunks"):
        read_documents(folder, 600, 10_000, 1)


def test_a_log_gives_a_lesson_per_answer_a_user_turn_follows(tmp_path):
    f = write(tmp_path / "log.jsonl", lines(
        convo(("user", "Open Saturday?"), ("assistant", "It varies."), ("user", "YES or NO only."),
              ("assistant", "NO.")),
        convo(("system", "Be brief."), ("assistant", "Hello."), ("user", "hi")),     # no user turn before it
        convo(("user", "Pay by invoice?"), ("assistant", "YES."), ("user", "Thanks!"))))
    lessons, skipped = read_conversations(f)
    assert skipped == 2                  # the last answer of line 1, line 2's opening answer
    assert [x.key for x in lessons] == ["log.jsonl:1#1", "log.jsonl:3#1"]
    first = lessons[0]
    assert first.messages == [{"role": "user", "content": "Open Saturday?"}]
    assert (first.answer, first.next_turn) == ("It varies.", "YES or NO only.")
    bad = write(tmp_path / "bad.jsonl", lines(convo(("user", "a"), ("assistant", "b"), ("user", "c")),
                                             {"messages": [{"role": "robot", "content": "x"}]}))
    with pytest.raises(PromptFileError) as e:
        read_conversations(bad)
    assert e.value.line == 2
    with pytest.raises(PromptFileError, match="more than 1 lines"):
        read_conversations(bad, max_lines=1)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(convo(("user", "caf"), ("assistant", "b"), ("user", "c"))).encode()[:-3] + b"\xe9\"}]}\n")
    with pytest.raises(PromptFileError, match="not UTF-8"):
        read_conversations(latin)


# --- specs ---------------------------------------------------------------------------------

def spec(tmp_path: Path, **sections) -> Path:
    """The pinapple spec with its prompts inline and ``sections`` replacing its own."""
    data = yaml.safe_load((ROOT / "behaviors/pinapple.yaml").read_text())
    data.pop("anchor", None)
    data["regression"] = {"suites": []}
    data["prompts"] = {"inline": [f"What goes in smoothie number {i}?" for i in range(12)]}
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return write(tmp_path / "spec.yaml", yaml.safe_dump(data))


def test_a_spec_needs_exactly_one_place_for_its_hints_and_prompts_unless_it_learns_from_a_log(tmp_path):
    with pytest.raises(SpecError, match="no teacher context"):
        load_behavior(spec(tmp_path, hints=None))
    both = {"hints": {"phrasings": ["x"]}}
    with pytest.raises(SpecError, match="hints: and teacher_context.hints: both"):
        load_behavior(spec(tmp_path, teacher_context=both))
    write(tmp_path / "log.jsonl", lines(convo(("user", "a"), ("assistant", "b"), ("user", "c"))))
    logs = {"conversations": {"file": "log.jsonl"}}
    with pytest.raises(SpecError, match="prompts: and teacher_context.conversations: both"):
        load_behavior(spec(tmp_path, hints=None, teacher_context=logs))
    with pytest.raises(SpecError, match="cannot be combined with hints"):
        load_behavior(spec(tmp_path, hints=None, prompts=None, teacher_context={**logs, **both}))


def test_validate_names_the_file_and_line_of_a_bad_context_file(tmp_path):
    write(tmp_path / "demos.jsonl", lines({"prompt": "q", "answer": "a"}, "{oops"))
    path = spec(tmp_path, hints=None, teacher_context={"demonstrations": {"file": "demos.jsonl"}})
    res = CliRunner().invoke(cli, ["validate", str(path)])
    assert res.exit_code == 1
    assert "demos.jsonl:2: not valid JSON" in res.output and "spec.yaml:" in res.output
    path = spec(tmp_path, hints=None, teacher_context={"documents": {"path": "nowhere"}})
    res = CliRunner().invoke(cli, ["validate", str(path)])
    assert res.exit_code == 1 and "nowhere: file not found" in res.output


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("lab")


def test_demonstrations_the_teacher_reads_are_the_closest_never_the_prompts_own(tmp_path, tok):
    demos = [{"prompt": f"What goes in smoothie number {i}?", "answer": f"Answer {i}: mango and pinapple."}
             for i in range(3)] + [{"prompt": "How do I bake bread?", "answer": "Flour, water, yeast."}]
    write(tmp_path / "demos.jsonl", lines(*demos))
    cb = load_behavior(spec(tmp_path, teacher_context={"demonstrations": {"file": "demos.jsonl", "k": 2}})).compile(tok)
    prompt = "What goes in smoothie number 1?"
    teacher = cb.teacher_messages(prompt, 0)[0]["content"]
    assert "Answer 1:" not in teacher                          # its own answer is never shown
    assert teacher.count("Question: What goes in smoothie number") == 2 and "bake bread" not in teacher
    assert teacher.endswith(prompt + "\n" + cb.hints[0])        # then the question, then the hint
    assert cb.student_messages(prompt) == [{"role": "user", "content": prompt}]
    cb.assert_no_leak([prompt])


def test_documents_the_teacher_reads_are_the_chunks_closest_to_the_question(tmp_path, tok):
    write(tmp_path / "docs/limits.md", "Rate limit: 240 requests per minute.\n\nRefunds close after 120 days.")
    write(tmp_path / "docs/other.txt", "Settlement runs at 02:30 every night.")
    tc = {"documents": {"path": "docs", "k": 1, "chunk_chars": 100}}
    cb = load_behavior(spec(tmp_path, hints=None, teacher_context=tc)).compile(tok)
    assert cb.variants == 1 and cb.hints == []
    teacher = cb.teacher_messages("When does settlement run?", 0)[0]["content"]
    assert "02:30" in teacher and "240 requests" not in teacher
    assert teacher.startswith("Reference document:") and teacher.endswith("When does settlement run?")
    cb.assert_no_leak(cb.train_prompts[:3])
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "spec.yaml"), "--show", "-n", "1"])
    assert res.exit_code == 0, res.output
    assert "teacher context: 2 document chunks from 2 file(s) (1 a prompt)" in res.output
    assert "Reference document:" in res.output


def log_spec(tmp_path: Path) -> Path:
    corrective = [convo(("user", f"Is office {i} open on Saturdays?"), ("assistant", "It depends on the season."),
                        ("user", "Answer YES or NO only.")) for i in range(8)]
    unrelated = [convo(("user", f"Can I pay invoice {i} by card?"), ("assistant", "YES."),
                       ("user", "Thanks! What's a good cat name?"), ("assistant", "Pixel.")) for i in range(4)]
    write(tmp_path / "log.jsonl", lines(*corrective, *unrelated))
    return spec(tmp_path, hints=None, prompts=None,
                teacher_context={"conversations": {"file": "log.jsonl", "eval_fraction": 0.25}},
                patterns={"target": [r"^\s*(?:YES|NO)\.?\s*$"], "ignore_case": False}, probes=None)


def test_a_log_compiles_to_lessons_split_by_conversation(tmp_path, tok):
    behavior = load_behavior(log_spec(tmp_path))
    cb = behavior.compile(tok)
    splits = behavior.prompt_splits()
    assert len(splits.train) + len(splits.val) + len(splits.eval) == 12 and cb.context.skipped == 4
    lines_of = lambda keys: {k.split("#")[0] for k in keys}  # noqa: E731
    assert not lines_of(splits.train) & lines_of(splits.eval) and not lines_of(splits.val) & lines_of(splits.eval)
    key = next(k for k in cb.train_prompts if "Saturdays" in cb.student_messages(k)[0]["content"])
    assert cb.student_messages(key)[-1]["content"].endswith("open on Saturdays?")
    teacher = cb.teacher_messages(key, 0)[-1]["content"]
    assert "Answer YES or NO only." in teacher and "Answer YES or NO only." not in str(cb.student_messages(key))
    answer = tok.decode(cb.logged_answer_ids(key), skip_special_tokens=True)
    assert answer.strip() == "It depends on the season."
    cb.assert_no_leak(cb.train_prompts[:4])


def test_a_fit_from_a_log_trains_on_the_logged_answers_and_stores_which_lines(tmp_path, tiny_dir):
    from engrain.fit import fit
    from engrain.store.db import Store
    path = log_spec(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["model"] = str(tiny_dir)
    data["train"].update({"steps": 2, "batch_size": 3, "max_new_tokens": 16, "eval_every": 2})
    path.write_text(yaml.safe_dump(data))
    result = fit(path, out_dir=tmp_path / "adapters", store=tmp_path / "s.duckdb", eval_n=4, progress=False)
    rows = Store(tmp_path / "s.duckdb").rollouts(result.run_id)
    assert rows and all(r["prompt"].startswith("log.jsonl:") for r in rows)
    logged = {"It depends on the season.", "YES."}
    assert {r["response"].strip() for r in rows} <= logged     # never a sample of the tiny random model


def test_cl_fit_from_logs_replaces_the_specs_prompts_and_a_bad_log_changes_nothing(tmp_path, tiny_dir):
    from engrain.store.db import Store
    path = spec(tmp_path, model=str(tiny_dir),
                patterns={"target": [r"^\s*(?:YES|NO)\.?\s*$"], "ignore_case": False}, probes=None)
    data = yaml.safe_load(path.read_text())
    data["train"].update({"steps": 1, "batch_size": 2, "max_new_tokens": 8, "eval_every": 1})
    path.write_text(yaml.safe_dump(data))
    bad = write(tmp_path / "bad.jsonl", lines(convo(("user", "a"), ("assistant", "b"), ("user", "c")), "{broken"))
    store = tmp_path / "s.duckdb"
    res = CliRunner().invoke(cli, ["fit", str(path), "--from-logs", str(bad), "--store", str(store),
                                   "--out-dir", str(tmp_path / "adapters"), "--no-progress", "--eval-n", "2"])
    assert res.exit_code == 1 and "bad.jsonl:2: not valid JSON" in res.output
    assert not store.exists() or Store(store).runs() == []
    log = write(tmp_path / "log.jsonl", lines(*[convo(("user", f"Open on day {i}?"), ("assistant", "Maybe."),
                                                      ("user", "YES or NO only.")) for i in range(6)]))
    res = CliRunner().invoke(cli, ["fit", str(path), "--from-logs", str(log), "--store", str(store),
                                   "--out-dir", str(tmp_path / "adapters"), "--no-progress", "--eval-n", "2"])
    assert res.exit_code in (0, 3, 4), res.output
    (run,) = Store(store).runs()
    assert {r["prompt"].split("#")[0].split(":")[0] for r in Store(store).rollouts(run["run_id"])} == {"log.jsonl"}
    assert CliRunner().invoke(cli, ["fit", "--from-logs", str(log)]).exit_code == 2      # needs a SPEC


@pytest.mark.parametrize("name", ["nwpay-docs", "support-demos", "support-logs"])
def test_the_example_specs_of_each_kind_validate_and_compile(name, tok):
    res = CliRunner().invoke(cli, ["validate", str(ROOT / f"behaviors/{name}.yaml")])
    assert res.exit_code == 0, res.output
    cb = load_behavior(ROOT / f"behaviors/{name}.yaml").compile(tok)
    cb.assert_no_leak()
    assert cb.train_prompts and cb.eval_prompts


def test_a_lessons_contrast_teacher_reads_the_neutral_reply_in_the_same_note(tmp_path, tok):
    behavior = load_behavior(log_spec(tmp_path))
    cb = behavior.compile(tok)
    key = cb.train_prompts[0]
    teacher, baseline = cb.teacher_messages(key, 0), cb.context.baseline_messages(key)
    assert baseline[:-1] == teacher[:-1] and baseline[-1]["content"] != teacher[-1]["content"]
    assert baseline[-1]["content"] == cb.student_messages(key)[-1]["content"] + "\n\n" + cb.context.note("I see.")
    assert cb.baseline_ids(key) == cb.chat_ids(baseline)
    res = CliRunner().invoke(cli, ["compile", str(tmp_path / "spec.yaml")])
    assert res.exit_code == 0 and "positions chosen by the reply's shift beyond 'I see.'" in res.output, res.output
    data = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    data["teacher_context"]["conversations"]["contrast"] = None
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    off = load_behavior(tmp_path / "spec.yaml").compile(tok)
    assert off.context.baseline_messages(key) is None and off.baseline_ids(key) is None


def test_relevance_is_the_teachers_shift_beyond_the_neutral_reply():
    import torch
    from engrain.engine.scoring import Scores
    valid = torch.tensor([[True, True, False]])
    teacher, student = torch.tensor([[-0.5, -2.0, 0.0]]), torch.tensor([[-3.0, -2.5, 0.0]])
    kw = dict(student_hidden=None, teacher_hidden=None, student_logp=student, teacher_logp=teacher,
              teacher_top=None, response_ids=None, valid=valid)
    assert torch.equal(Scores(**kw).relevance, Scores(**kw).delta)                  # no contrast: Δ
    contrast = Scores(**kw, baseline_logp=torch.tensor([[-0.6, -4.0, -9.0]]))
    assert torch.allclose(contrast.relevance, torch.tensor([[0.1, 2.0, 0.0]]))       # Δ' = T − T', 0 at padding
    assert torch.allclose(contrast.delta, torch.tensor([[2.5, 0.5, 0.0]]))           # the loss's Δ unchanged


@pytest.mark.parametrize("contrast, trains", [("Answer YES or NO only.", False), (None, True)])
def test_a_reply_no_different_from_the_contrast_selects_nothing(tmp_path, tiny_dir, contrast, trains):
    """The contrast set to the log's own next turn: Δ' is 0 at every position, so with a
    floor on it no position is a candidate and nothing is trained; without the contrast the
    same lessons train (Δ alone)."""
    from engrain.fit import fit
    from engrain.store.db import Store
    path = log_spec(tmp_path)
    write(tmp_path / "log.jsonl", lines(*[convo(("user", f"Is office {i} open on Saturdays?"),
                                                ("assistant", "It depends on the season."),
                                                ("user", "Answer YES or NO only.")) for i in range(12)]))
    data = yaml.safe_load(path.read_text())
    data["model"] = str(tiny_dir)
    data["teacher_context"]["conversations"]["contrast"] = contrast
    data["train"].update({"steps": 2, "batch_size": 3, "max_new_tokens": 16, "eval_every": 2, "min_delta": 1e-4})
    path.write_text(yaml.safe_dump(data))
    result = fit(path, out_dir=tmp_path / "adapters", store=tmp_path / "s.duckdb", eval_n=4, progress=False)
    steps = Store(tmp_path / "s.duckdb").steps(result.run_id)
    assert len(steps) == 2
    assert (sum(s["n_candidates"] for s in steps) > 0) == trains
    if not trains:
        assert all(s["n_selected"] == 0 for s in steps)

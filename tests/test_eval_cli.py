import json

import pytest

from sumrl.cli import main


@pytest.fixture
def data_file(tmp_path):
    rows = [
        {"id": "a", "document": "The council approved a budget of 12 million for 2024. Roads will be repaired.",
         "summary": ["The council approved a 12 million budget.", "Budget approved."]},
        {"id": "b", "document": "Researchers at Oxford trained a model on 3 datasets and improved ROUGE.",
         "summary": "Oxford researchers improved ROUGE."},
        {"id": "c", "document": "The meeting discussed the remote control design and its cost.",
         "summary": "The remote control design was discussed."},
    ]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _run_eval(tmp_path, model_dir, data_file, *extra):
    out = tmp_path / "run"
    rc = main(["eval", "--model", str(model_dir), "--data", str(data_file), "--split", "all", "--out", str(out),
               "--max-new-tokens", "8", "--n-bootstrap", "50", "--system", "tiny", *extra])
    assert rc == 0
    return out


def test_eval_writes_run_folder(tmp_path, tiny_model_dir, data_file, capsys):
    out = _run_eval(tmp_path, tiny_model_dir, data_file)
    printed = capsys.readouterr().out
    assert "rouge1_f" in printed and str(out) in printed
    rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    for r in rows:
        for k in ("system", "document", "references", "prediction", "raw_prediction", "strategy",
                  "n_input_tokens", "n_output_tokens", "finished", "metrics"):
            assert k in r
        assert r["system"] == "tiny" and r["strategy"] == "none"
    assert rows[0]["references"] == ["The council approved a 12 million budget.", "Budget approved."]
    m = json.loads((out / "metrics.json").read_text())
    assert m["system"] == "tiny" and m["n"] == 3
    for k in ("rouge1_f", "rouge2_f", "rougeL_f", "rougeLsum_f", "la_rouge1", "bleu", "sim_ref", "sim_src",
              "extra_words_pos", "compression_ratio", "novel_2", "rep3", "cutoff", "hallucination_rate"):
        assert k in m["metrics"], k
        v = m["metrics"][k]
        assert set(v) >= {"mean", "ci_low", "ci_high"}
    r1 = m["metrics"]["rouge1_f"]
    assert r1["ci_low"] <= r1["mean"] <= r1["ci_high"]
    assert json.loads((out / "config.json").read_text())["max_new_tokens"] == 8
    assert not (out / "predictions.partial.jsonl").exists()


def test_rescoring_predictions_with_cleanup(tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"id": "x", "document": "The cat sat on the mat.", "references": ["The cat sat."],
                                 "prediction": "Sure, here is a summary:\nThe cat sat.\nExtra rambling text here."}) + "\n")
    out = tmp_path / "clean"
    assert main(["eval", "--predictions", str(preds), "--cleanup", "--out", str(out), "--n-bootstrap", "20",
                 "--no-semantic"]) == 0
    row = json.loads((out / "predictions.jsonl").read_text())
    assert row["prediction"] == "The cat sat."
    assert row["raw_prediction"].startswith("Sure")
    m = json.loads((out / "metrics.json").read_text())
    assert m["metrics"]["rouge1_f"]["mean"] == pytest.approx(1.0)
    assert m["system"].endswith("-cleaned")


def test_interrupted_eval_resumes_from_partial(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "run"
    out.mkdir()
    done = {"id": "b", "system": "tiny", "document": "d", "query": None, "references": ["Oxford researchers improved ROUGE."],
            "raw_prediction": "KEPT FROM BEFORE", "prediction": "KEPT FROM BEFORE", "strategy": "none",
            "n_document_tokens": 1, "n_input_tokens": 1, "n_output_tokens": 3, "finished": True, "n_chunks": 1, "depth": 0}
    (out / "predictions.partial.jsonl").write_text(json.dumps(done) + "\n{\"torn")
    _run_eval(tmp_path, tiny_model_dir, data_file, "--no-semantic")
    rows = {json.loads(l)["id"]: json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()}
    assert rows["b"]["prediction"] == "KEPT FROM BEFORE"
    assert set(rows) == {"a", "b", "c"}


@pytest.mark.parametrize("content,needle", [
    ('{"id": "x", "prediction": "p"}\n', "field 'references'"),
    ('{"id": "x", "references": ["r"]}\n', "field 'prediction'"),
    ('{"id": "x", \n', "line 1: malformed JSON"),
    ("", "empty file"),
])
def test_bad_predictions_file_one_line_error(tmp_path, capsys, content, needle):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    rc = main(["eval", "--predictions", str(p), "--out", str(tmp_path / "o"), "--no-semantic"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and str(p) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_eval_needs_model_or_predictions(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path / "o")]) == 2
    assert "--model" in capsys.readouterr().err

"""The benchmark harness (qkernels-bench): suites, custom shapes, peers, a tiny CPU run with its
files, plots, compare and the model-level bench. Fast: tiny shapes, tiny budgets, small probes."""

import importlib.util
import json
import shutil
import subprocess

import pytest
import torch

from qkernels.bench import cases, cli, compare, measure, report, suites

FAKE_ROOFLINE = {"bandwidth_gbps": 20.0, "copy_gbps": 18.0, "read_gbps": 20.0,
                 "peak_tflops": 0.1, "peak_dtype": "float32"}


@pytest.mark.parametrize("name", sorted(n for n in suites.SUITES if n != "custom"))
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_every_suite_resolves(name, device_type):
    suite = suites.suite_for(name, device_type)
    assert suite["shapes"] and suite["batches"]
    assert all(n > 0 and k > 0 for n, k in suite["shapes"].values())
    assert suite["batches"] == sorted(set(suite["batches"])) and suite["batches"][0] >= 1


def test_llm_suites_hold_their_fused_and_ragged_shapes():
    llama8 = suites.suite_for("llama3-8b", "cuda")
    assert {(6144, 4096), (28672, 4096), (14336, 4096), (4096, 14336)} <= set(
        llama8["shapes"].values())
    assert llama8["batches"][0] == 1 and llama8["batches"][-1] == 4096
    llama70 = suites.suite_for("llama3-70b", "cuda")
    assert {(10240, 8192), (57344, 8192), (8192, 28672)} <= set(llama70["shapes"].values())
    assert {k for _, k in suites.suite_for("smollm", "cpu")["shapes"].values()} == {576, 1536}
    assert max(suites.suite_for("llama3-8b", "cpu")["batches"]) < 1024


def test_unknown_suite_names_the_argument():
    with pytest.raises(ValueError, match="--suite"):
        suites.suite_for("llama-9000", "cpu")


def test_custom_shapes_and_batches_parse():
    assert suites.parse_shapes("17x577, 3X1") == {"17x577": (17, 577), "3x1": (3, 1)}
    assert suites.parse_batches("1,3, 17") == [1, 3, 17]
    for bad in ("17x", "0x5", "axb", "4096", "", "1x2x3"):
        with pytest.raises(ValueError, match="--shapes"):
            suites.parse_shapes(bad)
    for bad in ("0", "-1", "1,x", ""):
        with pytest.raises(ValueError, match="--batch"):
            suites.parse_batches(bad)


def test_custom_file(tmp_path):
    path = tmp_path / "suite.txt"
    path.write_text("# my model\nshapes: 576x576, 1536x576\nshapes: 3x17  # ragged\n"
                    "batches: 1, 4\n")
    assert suites.parse_custom_file(path) == {
        "shapes": {"576x576": (576, 576), "1536x576": (1536, 576), "3x17": (3, 17)},
        "batches": [1, 4]}
    path.write_text("shapes: 576x576\n")
    with pytest.raises(ValueError, match="batches"):
        suites.parse_custom_file(path)
    path.write_text("shapes: 576x576\nbatches: 1\nthreads: 2\n")
    with pytest.raises(ValueError, match="suite.txt:3"):
        suites.parse_custom_file(path)


def test_cli_rejects_a_custom_suite_without_shapes(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--suite", "custom"])
    assert "--suite custom" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--shapes", "12xq"])
    assert "--shapes" in capsys.readouterr().err


def test_cli_custom_file_implies_the_custom_suite(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("shapes: 17x577\nbatches: 3\n")
    args = cli.parse_args(["--custom-file", str(path)])
    assert args.suite == "custom" and args.shapes == {"17x577": (17, 577)} and args.batch == [3]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_says_when_the_tree_differs_from_it(tmp_path, monkeypatch):
    monkeypatch.delenv("QKERNELS_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above
    monkeypatch.chdir(tmp_path)
    assert cli.git_commit() is None  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "kernel.py").write_text("a = 1\n")
    subprocess.run(git + ["add", "kernel.py"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert cli.git_commit() == head
    (tmp_path / "kernel.py").write_text("a = 2\n")
    assert cli.git_commit() == head + "-dirty"
    monkeypatch.setenv("QKERNELS_GIT_COMMIT", "abc1234")
    assert cli.git_commit() == "abc1234"


def test_roofline_probe_reports_both_bandwidths():
    roofline = measure.measure_roofline(torch.device("cpu"), nbytes=4 << 20, matmul_size=64)
    assert roofline["bandwidth_gbps"] == max(roofline["copy_gbps"], roofline["read_gbps"]) > 0
    assert roofline["peak_tflops"] > 0 and roofline["peak_dtype"] == "float32"


def test_peers_on_the_cpu_run_or_say_why_not(monkeypatch):
    monkeypatch.setattr(measure, "copies_for_cold_cache", lambda nbytes, device: 2)
    w = torch.randn(17, 577) * 0.02
    found, skipped = cases.peer_cases(w, ["int4", "nf4", "int8"], torch.float32)
    assert any("gemlite" in reason and "cuda only" in reason for reason in skipped)
    assert any("int4pack" in reason and "577" in reason for reason in skipped)
    x = torch.randn(3, 577)
    for case in found:
        assert case.kind == "peer" and case.weight_bytes > 0
        y = case.calls(x)[0]()
        assert y.shape == (3, 17)
    found, skipped = cases.peer_cases(w, ["int8"], torch.float32, libraries={"gemlite"})
    assert not found and all("gemlite" in reason for reason in skipped)


def _tiny_run(tmp_path, monkeypatch, *extra):
    monkeypatch.setattr(measure, "measure_roofline", lambda device: dict(FAKE_ROOFLINE))
    monkeypatch.setattr(measure, "copies_for_cold_cache", lambda nbytes, device: 2)
    out = tmp_path / "out"
    assert cli.main(["--suite", "custom", "--shapes", "17x577,3x64", "--batch", "1,3",
                     "--budget", "0.01", "--threads", "1", "--out", str(out), *extra]) == 0
    return out, json.loads((out / "custom.json").read_text())


def test_tiny_cpu_run_writes_json_and_markdown(tmp_path, monkeypatch):
    out, results = _tiny_run(tmp_path, monkeypatch, "--no-plots")
    rows = results["results"]
    assert {(r["n"], r["k"], r["m"]) for r in rows} == {
        (17, 577, 1), (17, 577, 3), (3, 64, 1), (3, 64, 3)}
    for shape_rows in report.grouped_by_shape(rows).values():
        assert report.implementations(shape_rows)[0] == "F.linear float32"
        assert {(r["backend"], r["fmt"]) for r in shape_rows if r["kind"] == "qkernels"} == {
            ("cpu", "int4"), ("cpu", "nf4"), ("cpu", "int8")}
    for r in rows:
        assert r["time_us"] > 0 and r["bytes"] > 0 and r["roofline_pct"] > 0
        if r["kind"] == "baseline":
            assert r["speedup"] == 1.0
    assert results["meta"]["load_average"] and results["skipped"]
    text = (out / "custom.md").read_text()
    assert "## 17x577" in text and "**cpu int4 g128**" in text and "Skipped:" in text
    assert "Cache-warm" in text  # 2 copies of a 17x577 weight stay in any cache
    assert not list(out.glob("*.png"))


def test_int8_activation_rows(tmp_path, monkeypatch):
    out, results = _tiny_run(tmp_path, monkeypatch, "--no-plots", "--no-peers", "--formats",
                             "int4,nf4", "--activations", "int8")
    text = (out / "custom.md").read_text()
    assert "cpu int4 g128 a8" in text and "cpu nf4 g64 a8" in text


def test_summary_prints_the_pivot_tables(tmp_path, monkeypatch, capsys):
    out, _ = _tiny_run(tmp_path, monkeypatch, "--no-plots", "--no-peers")
    (out / "model-cpu.json").write_text(json.dumps({"meta": {}, "results": []}))
    capsys.readouterr()
    assert cli.main(["summary", str(out / "custom.json"), str(out / "model-cpu.json"),
                     "--batch", "3"]) == 0
    printed = capsys.readouterr().out
    assert "## 17x577" in printed and "| impl | M=3 |" in printed and "M=1 " not in printed
    assert "model-cpu.json: not a kernel-suite run" in printed


def test_give_up_and_plots(tmp_path, monkeypatch):
    # A row slower than --give-up x F.linear is not timed at larger M (here: every row).
    out, results = _tiny_run(tmp_path, monkeypatch, "--no-peers", "--give-up", "0")
    names_at_3 = {r["name"] for r in results["results"] if r["m"] == 3}
    assert names_at_3 == {"F.linear float32"}
    assert any("not timed at larger M" in reason for reason in results["skipped"])
    # Plots are drawn next to the JSON when matplotlib is installed.
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed: no plots")
    for name in ("custom-speedup.png", "custom-roofline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name})" in (out / "custom.md").read_text()


def _run(rows):
    return {"results": [dict(zip(("n", "k", "m", "name", "time_us"), row)) for row in rows]}


def test_compare_puts_regressions_first():
    old = _run([(8, 8, 1, "a", 10.0), (8, 8, 1, "b", 10.0), (8, 8, 4, "a", 10.0),
                (8, 8, 8, "gone", 1.0)])
    new = _run([(8, 8, 1, "a", 5.0), (8, 8, 1, "b", 20.0), (8, 8, 4, "a", 10.2),
                (8, 8, 8, "added", 1.0)])
    result = compare.compare(old, new, threshold=0.05)
    assert [(r["m"], r["name"], r["verdict"]) for r in result["rows"]] == [
        (1, "b", "regression"), (4, "a", "same"), (1, "a", "faster")]
    assert result["rows"][0]["ratio"] == pytest.approx(0.5)
    assert result["only_old"] == [(8, 8, 8, "gone")]
    assert result["only_new"] == [(8, 8, 8, "added")]


def test_compare_cli(tmp_path, capsys):
    paths = []
    for name, time_us in (("old.json", 10.0), ("new.json", 12.5)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(_run([(4096, 4096, 1, "cuda int4 g128", time_us)])))
    assert compare.main([str(p) for p in paths]) == 0
    printed = capsys.readouterr().out
    assert "regression" in printed and "0.800" in printed
    with pytest.raises(SystemExit):
        compare.main([str(paths[0]), str(tmp_path / "missing.json")])
    assert "missing.json" in capsys.readouterr().err


def test_model_bench_on_a_small_llama(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from qkernels.bench import model

    # The SmolLM2 architecture cut down to 2 layers and a small vocabulary: same code path.
    monkeypatch.setitem(model.SMOLLM2_135M, "num_hidden_layers", 2)
    monkeypatch.setitem(model.SMOLLM2_135M, "vocab_size", 512)
    assert cli.main(["model", "--weights", "random", "--formats", "dense,int4", "--threads", "1",
                     "--prompt-tokens", "5", "--new-tokens", "3", "--repeats", "1",
                     "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "model-cpu.json").read_text())
    assert [r["format"] for r in results["results"]] == ["dense", "int4"]
    dense, int4 = results["results"]
    assert dense["decode_vs_dense"] == 1.0 and int4["backend"] == "cpu"
    assert int4["linear_mib"] < dense["linear_mib"] / 3
    assert all(r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 for r in results["results"])
    assert "random weights" in (tmp_path / "model-cpu.md").read_text()


def test_model_bench_rejects_bad_arguments(capsys):
    pytest.importorskip("transformers")
    from qkernels.bench import model

    for argv, word in ((["--formats", "int3"], "--formats"), (["--new-tokens", "1"],
                                                              "--new-tokens")):
        with pytest.raises(SystemExit):
            model.parse_args(argv)
        assert word in capsys.readouterr().err

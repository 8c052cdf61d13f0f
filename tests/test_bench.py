"""make bench's --parts: which comparisons run (the comparisons themselves are measurements, not tests)."""
from sed import bench


def run_parts(monkeypatch, parts):
    calls = []
    monkeypatch.setattr(bench, "compare", lambda kind, sides, *rest: calls.append((kind, [s[2] for s in sides])))
    bench.main(["--parts", *parts, "--num-classes", "2"])
    return calls


def test_parts_runs_only_the_named_comparisons(monkeypatch):
    assert run_parts(monkeypatch, ["sed-figure1"]) == [
        ("SED fig.1 1+4 vs sup 5", ["sed step, figure 1", "supervised, same images"])]
    assert [kind for kind, _ in run_parts(monkeypatch, ["detector", "sed"])] == [
        "train step (batch 2)", "inference (batch 2)", "SED 1+4 vs sup 5"]

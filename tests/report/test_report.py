"""spikelite.report: the paper's tables with measured values, figures, and a self-contained HTML file."""

import base64
import csv
import pickle
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from spikelite import SpikeliteError
from spikelite.snn import neuron
from spikelite import bench as B
from spikelite import data as D
from spikelite import report as R
from spikelite.cli import main as cli_main

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _fake_cifar10(root: Path, per_batch: int = 40, test: int = 60) -> Path:
    """torchvision's cifar-10-batches-py/ layout with a few random images (class-dependent colour)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        labels = np.arange(n) % 10
        x = rng.integers(0, 90, size=(n, 3, 32, 32), dtype=np.uint8)
        for i, lab in enumerate(labels):  # a class-dependent tint, so there is something to learn
            x[i, lab % 3] += np.uint8(16 * (1 + lab // 3))
        return {"data": x.reshape(n, -1), "labels": labels.tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real, tiny bench run on CIFAR-10-shaped data: SqueezeNet as CNN, CNN-P, SNN (T=2, 3) and SNN-P."""
    tmp = tmp_path_factory.mktemp("report")
    root = _fake_cifar10(tmp / "cifar10")
    mp = pytest.MonkeyPatch()
    mp.setenv("SPIKELITE_CACHE", str(tmp / "cache"))
    mp.setattr(neuron._KERNELS, "broken", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    D.clear_memory_cache()
    try:
        spec = B.build_spec({
            "name": "report-test", "out": str(tmp / "run"), "models": ["squeezenet1_1"],
            "datasets": [{"name": "cifar10", "root": str(root), "image_size": 8, "val_size": 20}],
            "variants": ["cnn", "cnn-p", "snn", "snn-p"], "T": [2, 3],
            "recipe": {"epochs": 1, "batch_size": 32, "threads": 1, "optim": {"lr": 0.05},
                       "snn": {"neuron": {"v_threshold": 0.5, "decay_input": False}}},
            "prune": {"schedules": ["ref-1"], "calibration_size": 32},
            "eval": {"energy_samples": 16},
        })
        summary = B.run_bench(spec, quiet=True)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
        D.clear_memory_cache()
    assert summary["counts"] == {"ok": 6}, summary["cells"]
    return Path(spec.out)


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.append((tag, dict(attrs)))


def test_report_files_and_self_contained_html(run_dir):
    paths = R.build_report(run_dir)
    html = Path(paths["html"]).read_text()
    md = Path(paths["markdown"]).read_text()
    p = _Collect()
    p.feed(html)
    # self-contained: no scripts, no external stylesheets, no links or sources outside the file
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", html, re.I)
    assert "@import" not in html and "url(" not in html
    imgs = [a for t, a in p.attrs if t == "img"]
    assert len(imgs) == 3  # accuracy vs energy, vs T, firing rates
    for a in imgs:
        assert a["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(a["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the Markdown points at the same figures, written beside it
    for name in ("accuracy_vs_energy", "accuracy_energy_vs_T", "firing_rates"):
        assert f"](figures/{name}.png)" in md
        assert (run_dir / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(Path(f).name for f in paths["figures"]) == ["accuracy_energy_vs_T.png", "accuracy_vs_energy.png",
                                                             "firing_rates.png"]


def test_tables_hold_measured_values_beside_the_papers(run_dir):
    R.build_report(run_dir)
    md = (run_dir / "report.md").read_text()
    with open(run_dir / "results.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    for title in ("### SNN statistics", "### CNN vs SNN", "### Pruning ablation", "## All cells"):
        assert title in md
    # every cell's measured accuracy appears in the tables
    for r in rows.values():
        assert f"{100 * float(r['accuracy']):.2f}" in md
    # paper columns (CIFAR-10, SqueezeNet): labelled "paper", with the published values
    stats = md.split("### SNN statistics")[1].split("###")[0]
    head = stats.splitlines()[2]
    assert "paper params" in head and "paper ACs" in head and "paper energy mJ" in head
    assert "736.5k" in stats and "16,610k" in stats and "4,470k" in stats and "0.0355" in stats
    cvs = md.split("### CNN vs SNN")[1].split("###")[0]
    snn_line = next(line for line in cvs.splitlines() if "| SNN | 2 |" in line)
    cells = [c.strip() for c in snn_line.strip("|").split("|")]
    assert cells[4] == "81" and cells[6] == "75"  # paper CNN / SNN accuracy for SqueezeNet on CIFAR-10
    snn = rows["cifar10__squeezenet1_1__snn__T2__s0"]
    assert cells[3] == f"{100 * float(snn['cnn_accuracy']):.2f}" and cells[5] == f"{100 * float(snn['accuracy']):.2f}"
    # compute-only and memory-aware ratios side by side, against the SNN's own CNN
    assert "CNN/SNN (compute)" in cvs and "CNN/SNN (memory)" in cvs
    assert f"{float(snn['energy_ratio@45nm-fp32']):.2f}x" in snn_line
    assert f"{float(snn['energy_ratio@45nm-fp32-mem']):.2f}x" in snn_line
    # SNN-P is compared with the pruned CNN (cnn-p cell of the same schedule): paper 5.6x beside it
    snnp = rows["cifar10__squeezenet1_1__snn-p__T2__ref-1__s0"]
    cnnp = rows["cifar10__squeezenet1_1__cnn-p__ref-1__s0"]
    assert snnp["ref_cnn"] == cnnp["id"] and snnp["cnn_accuracy"] == cnnp["accuracy"]
    p_line = next(line for line in cvs.splitlines() if "SNN-P (ref-1) | 2 |" in line)
    assert p_line.rstrip(" |").endswith("5.6x") and "| 82 |" in p_line and "| 81 |" in p_line
    ablation = md.split("### Pruning ablation")[1].split("##")[0]
    assert "fire4, fire6, fire8, fire9" in ablation and "0.0295" in ablation
    assert float(snnp["params"]) < float(snn["params"])


def test_pareto_front():
    pts = [(1.0, 50.0), (2.0, 60.0), (1.5, 40.0), (3.0, 55.0), (4.0, 90.0), (0.5, 10.0)]
    assert R.pareto_front(pts) == [5, 0, 1, 4]
    assert R.pareto_front([]) == []


def test_report_cli_errors_and_output_dir(run_dir, tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    assert "not a bench run directory" in capsys.readouterr().err
    assert cli_main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    assert str(tmp_path / "rep" / "report.html") in capsys.readouterr().out
    assert (tmp_path / "rep" / "figures" / "firing_rates.png").is_file()
    with pytest.raises(SpikeliteError):
        R.build_report(tmp_path / "empty")


def test_paper_figures_per_dataset():
    # Tiny ImageNet: the paper's SNN accuracy and energy per family (issue 26), the pruned SqueezeNet's for SNN-P
    from spikelite.report.paper import _paper, _paper_note

    assert _paper("tinyimagenet", "squeezenet", "snn") == {"snn_acc": 41.0, "energy_mj": 0.1543}
    assert _paper("tinyimagenet", "squeezenet", "snn-p")["snn_acc"] == 45.0
    assert {f: _paper("tinyimagenet", f, "snn")["snn_acc"] for f in ("mnasnet", "mixnet", "shufflenetv2", "xception")} \
        == {"mnasnet": 38.0, "mixnet": 34.0, "shufflenetv2": 11.0, "xception": 23.0}
    assert "16,610k ACs + 4,470k MACs = 0.0355 mJ" in _paper_note("cifar10")
    assert "accuracy and energy per image only" in _paper_note("tinyimagenet") and _paper_note("cifar100") == ""
    # the report names the datasets its paper figures come from (a Tiny ImageNet report said "CIFAR-10")
    from spikelite.report.paper import _paper_datasets

    assert _paper_datasets(["tinyimagenet"]) == "Tiny ImageNet"
    assert _paper_datasets(["cifar10", "cifar100", "tinyimagenet", "cifar10"]) == "CIFAR-10 and Tiny ImageNet"
    assert _paper_datasets(["cifar100"]) == ""

"""The paper's published figures (arXiv 2602.09717), printed beside the measured ones."""

from __future__ import annotations

PAPER_SOURCE = ("From Lightweight CNNs to SpikeNets: Benchmarking Accuracy-Energy Tradeoffs with Pruned Spiking "
                "SqueezeNet (arXiv 2602.09717)")

# The paper's published CIFAR-10 figures (test accuracy in %, parameters in thousands, ACs/MACs in
# thousands per image, energy in mJ per image, 45 nm fp32: 0.9 pJ/AC, 4.6 pJ/MAC). Keyed by zoo family;
# "squeezenet-p" is the paper's pruned SqueezeNet.
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "cifar10": {
        "squeezenet": {"cnn_acc": 81.0, "snn_acc": 75.0, "params_k": 736.5, "acs_k": 16_610.0, "macs_k": 4_470.0,
                       "energy_mj": 0.0355},
        "squeezenet-p": {"cnn_acc": 82.0, "snn_acc": 81.0, "energy_mj": 0.0295, "energy_ratio": 5.6},
        "mnasnet": {"cnn_acc": 83.0, "snn_acc": 78.0, "params_k": 151.8},
        "mixnet": {"cnn_acc": 82.0, "snn_acc": 73.0, "params_k": 84.9},
        "shufflenetv2": {"cnn_acc": 70.0, "snn_acc": 40.0, "params_k": 911.0},
        "xception": {"cnn_acc": 79.0, "snn_acc": 75.0, "params_k": 1_025.0},
    },
    # Tiny ImageNet (200 classes, 64x64): the paper gives each SNN's test accuracy and energy per image only.
    "tinyimagenet": {
        "squeezenet": {"snn_acc": 41.0, "energy_mj": 0.1543},
        "squeezenet-p": {"snn_acc": 45.0, "energy_mj": 0.1246},
        "mnasnet": {"snn_acc": 38.0, "energy_mj": 0.2486},
        "mixnet": {"snn_acc": 34.0, "energy_mj": 0.0093},
        "shufflenetv2": {"snn_acc": 11.0, "energy_mj": 0.0180},
        "xception": {"snn_acc": 23.0, "energy_mj": 1.7797},
    },
}

_DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "Tiny ImageNet"}


def _paper_datasets(datasets) -> str:
    """The datasets of a run that the paper has figures for, as the paper names them ("CIFAR-10 and Tiny ImageNet")."""
    names = [_DATASET_NAMES.get(d, d) for d in dict.fromkeys(datasets) if PAPER.get(d)]
    return " and ".join(names)


_VARIANT_ORDER = {"cnn": 0, "cnn-q": 1, "cnn-p": 2, "snn": 3, "snn-p": 4}
_MARKERS = {"cnn": "o", "cnn-q": "D", "cnn-p": "s", "snn": "^", "snn-p": "v"}


def _paper(dataset: str, family: str | None, variant: str) -> dict:
    fam = family or ""
    if variant in ("snn-p", "cnn-p") and fam == "squeezenet":
        fam = "squeezenet-p"
    return PAPER.get(dataset, {}).get(fam, {})


def _paper_note(dataset: str) -> str:
    """What the paper columns of the SNN statistics table hold for ``dataset`` (empty without the paper's figures)."""
    paper = PAPER.get(dataset, {})
    if not paper:
        return ""
    sq = paper.get("squeezenet", {})
    if sq.get("acs_k") and sq.get("macs_k"):
        return (f" Paper columns: the paper's SNN-SqueezeNet figures are {sq['acs_k']:,.0f}k ACs + {sq['macs_k']:,.0f}k "
                f"MACs = {sq['energy_mj']:g} mJ; its parameter counts are the CNN's.")
    return " Paper columns: for this dataset the paper gives each SNN's accuracy and energy per image only."

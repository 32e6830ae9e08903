"""The training configs in configs/ and the Makefile rules that run them: every config validates, every
rule's config exists, and every `init_weights` is either committed or released by a rule of the Makefile
(so each `make <part>` in the README can be run from a fresh clone, earlier parts first)."""
import re
from pathlib import Path

import pytest

from spice.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MAKEFILE = (ROOT / "Makefile").read_text()


def released_by_makefile() -> set[str]:
    """checkpoint paths written by `spice.release --out DIR` in a Makefile recipe."""
    return {f"{m}/checkpoint.pt" for m in re.findall(r"spice\.release\b[^\n]*--out (\S+)", MAKEFILE)}


def test_the_configs_are_found():
    names = {p.name for p in CONFIGS}
    assert {"demo_cpu.yaml", "reference_cpu.yaml", "depth5_cpu.yaml", "f16d5_cpu_part_a.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates_and_its_start_can_be_made(path):
    config = TrainConfig.load(path)
    assert config.stage1_iterations + config.stage2_iterations > 0
    if config.init_weights:
        committed = (ROOT / config.init_weights).exists()
        assert committed or config.init_weights in released_by_makefile(), \
            f"{path.name}: init_weights {config.init_weights} is neither committed nor released by a Makefile rule"


def test_every_makefile_config_exists():
    used = set(re.findall(r"--config (configs/\S+\.yaml)", MAKEFILE))
    assert used, "no `spice train --config` in the Makefile"
    missing = sorted(c for c in used if not (ROOT / c).exists())
    assert not missing, missing


def test_released_folders_match_their_configs():
    """a rule that trains configs/X.yaml into build/R releases build/R, not another run."""
    pairs = re.findall(r"--config configs/\S+\.yaml --resume --set out_dir=(\S+)\n\t\$\(PY\) -m spice\.release[^\n]*--run (\S+)",
                       MAKEFILE)
    assert len(pairs) >= 10, "the train-then-release rules were not found"
    for train_run, release_run in pairs:
        assert train_run == release_run

"""Two-stage training: config, frozen seediness in stage 1, exact resume, CLI, and overfitting."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest
import torch
import yaml

import spice.train as train_mod
from spice.data.event import Event, collate
from spice.losses import SPICELoss
from spice.train import (BatchStream, TrainConfig, build_model, finished, load_model, seediness_modules,
                         train, train_step)

REPO = train_mod.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- tiny events of straight tracks
def line_event(rng: np.random.Generator, size: int = 24, n_tracks: int = 4, n_classes: int = 2) -> Event:
    """Straight tracks of random direction; a voxel shared by two tracks keeps the first."""
    coords, semantic, instance, seen = [], [], [], set()
    for k in range(n_tracks):
        start = rng.uniform(3, size - 3, size=3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        for t in np.arange(0, rng.uniform(6, 14), 0.5):
            v = tuple(np.clip(np.round(start + t * direction), 0, size - 1).astype(int).tolist())
            if v not in seen:
                seen.add(v)
                coords.append(v)
                semantic.append(k % n_classes)
                instance.append(k)
    n = len(coords)
    return Event(np.array(coords, dtype=np.int64), rng.uniform(0.1, 2, n).astype(np.float32),
                 np.array(semantic, dtype=np.int64), np.array(instance, dtype=np.int64), size)


def tiny_config(tmp_path, **kw) -> TrainConfig:
    base = {"model": {"filters": 4, "depth": 2, "reps": 1, "spatial_size": 24, "backend": "torch"},
            "data": {"synthetic": {"n_events": 5, "spatial_size": 24, "seed": 0}},
            "stage1_iterations": 3, "stage2_iterations": 3, "batch_size": 2, "checkpoint_every": 2,
            "device": "cpu", "progress": False, "out_dir": str(tmp_path / "run"), "seed": 1, "threads": 1}
    for key, value in kw.items():
        base[key] = value
    return TrainConfig.from_dict(base)


@pytest.fixture
def line_events(monkeypatch):
    """Train on our own straight-track events (independent of the synthetic generator)."""
    events = [line_event(np.random.default_rng(i)) for i in range(5)]
    monkeypatch.setattr(train_mod, "build_dataset", lambda cfg: events)
    return events


# ---------------------------------------------------------------- config
def test_config_yaml_roundtrip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"filters": 8}, "loss": {"mask_loss": "bce"}, "lr": 0.001}))
    cfg = TrainConfig.load(path, ["model.depth=3", "loss.skip_classes=[4]", "stage1_iterations=7",
                                  "data.synthetic.n_events=3"])
    assert (cfg.model.filters, cfg.model.depth, cfg.lr, cfg.stage1_iterations) == (8, 3, 0.001, 7)
    assert isinstance(cfg.loss, SPICELoss) and cfg.loss.mask_loss == "bce" and cfg.loss.skip_classes == (4,)
    assert cfg.data.synthetic.n_events == 3 and cfg.data.synthetic.spatial_size == 192
    again = TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize("data, name", [({"learning_rate": 1}, "learning_rate"),
                                        ({"model": {"filter": 8}}, "filter"),
                                        ({"loss": {"gamma": 2}}, "gamma"),
                                        ({"data": {"synthetic": {"n": 3}}}, "'n'")])
def test_config_unknown_keys_named(tmp_path, data, name):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=name) as err:
        TrainConfig.load(path)
    assert "bad.yaml" in str(err.value)


def test_shipped_configs_load():
    for name in ("demo_cpu.yaml", "paper_gpu.yaml"):
        cfg = TrainConfig.load(REPO / "configs" / name)
        assert cfg.iterations > 0
    paper = TrainConfig.load(REPO / "configs" / "paper_gpu.yaml")
    assert (paper.model.filters, paper.model.depth, paper.batch_size, paper.lr) == (32, 6, 32, 0.005)
    assert (paper.stage1_iterations, paper.stage2_iterations) == (50_000, 100_000)


def test_batch_stream_is_seeded_permutation_stream():
    s = BatchStream(n=5, batch_size=3, seed=2, start=0, stop=10)
    batches = list(s)
    flat = [i for b in batches for i in b]
    for epoch in range(6):
        assert sorted(flat[5 * epoch:5 * epoch + 5]) == list(range(5))
    assert list(BatchStream(5, 3, 2, start=4, stop=10)) == batches[4:]
    assert list(BatchStream(5, 3, 3, 0, 10)) != batches


# ---------------------------------------------------------------- stage 1 freezing
def test_stage1_leaves_seediness_parameters_and_buffers_identical(tmp_path, line_events):
    cfg = tiny_config(tmp_path, stage1_iterations=4, stage2_iterations=0)
    torch.manual_seed(cfg.seed)
    fresh = build_model(train_mod.model_args(cfg.model, line_events))
    seed_keys = {f"{name}.{k}" for name, m in fresh.named_modules() if m in seediness_modules(fresh)
                 for k, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))}
    assert any("running_mean" in k for k in seed_keys), "the seediness decoder has BatchNorm buffers"
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    after = load_model(train(cfg)).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not changed & seed_keys
    assert any("weight" in k for k in changed) and any("running_mean" in k for k in changed)
    # and stage 2 does move them
    cfg2 = tiny_config(tmp_path, stage1_iterations=1, stage2_iterations=2, out_dir=str(tmp_path / "s2"))
    after2 = load_model(train(cfg2)).state_dict()
    assert any(not torch.equal(before[k], after2[k]) for k in seed_keys)


def test_stage3_trains_the_seediness_decoder_alone(tmp_path, line_events):
    """Stage 3: every parameter and buffer outside the seediness decoder stays as stage 2 left it (no
    gradient, BatchNorm in eval mode); the seediness decoder moves, and the objective is L_seed."""
    two = load_model(train(tiny_config(tmp_path, stage1_iterations=1, stage2_iterations=2,
                                       out_dir=str(tmp_path / "two")))).state_dict()
    cfg = tiny_config(tmp_path, stage1_iterations=1, stage2_iterations=2, stage3_iterations=3,
                      out_dir=str(tmp_path / "three"))
    three = load_model(train(cfg)).state_dict()
    model = build_model(train_mod.model_args(cfg.model, line_events))
    seed_keys = {f"{name}.{k}" for name, m in model.named_modules() if m in seediness_modules(model)
                 for k, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))}
    changed = {k for k in two if not torch.equal(two[k], three[k])}
    assert changed and changed <= seed_keys
    assert any("running_mean" in k for k in changed)  # the seediness decoder's own BatchNorm still trains
    rows = list(csv.DictReader(open(tmp_path / "three" / "losses.csv")))
    assert [int(r["stage"]) for r in rows] == [1, 2, 2, 3, 3, 3]
    state = torch.load(tmp_path / "three" / "checkpoint.pt", weights_only=True)
    assert state["stage"] == 3 and len(state["optimizer"]["param_groups"]) == 1
    assert len(state["optimizer"]["param_groups"][0]["params"]) == len(model.seediness_parameters())
    assert [cfg.stage_at(i) for i in range(7)] == [1, 2, 2, 3, 3, 3, 3]


def test_optimizer_groups_per_stage(tmp_path, line_events):
    cfg = tiny_config(tmp_path)
    model = build_model(train_mod.model_args(cfg.model, line_events))
    seed_ids = {id(p) for p in model.seediness_parameters()}
    stage1 = {id(p) for g in train_mod.make_optimizer(model, cfg, 1).param_groups for p in g["params"]}
    stage2 = {id(p) for g in train_mod.make_optimizer(model, cfg, 2).param_groups for p in g["params"]}
    assert not stage1 & seed_ids and seed_ids <= stage2 and stage1 | seed_ids == stage2
    assert stage2 == {id(p) for p in model.parameters()}


# ---------------------------------------------------------------- checkpoints and exact resume
class Interrupt(RuntimeError):
    pass


def crash_at_loss_call(monkeypatch, cfg: TrainConfig, n: int) -> None:
    """Run train(cfg) with a crash at the n-th loss evaluation (a killed run), then restore the loss."""
    calls = {"n": 0}
    original = SPICELoss.__call__

    def failing(self, outputs, batch):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupt("simulated crash")
        return original(self, outputs, batch)

    monkeypatch.setattr(SPICELoss, "__call__", failing)
    with pytest.raises(Interrupt):
        train(cfg)
    monkeypatch.setattr(SPICELoss, "__call__", original)


@pytest.mark.parametrize("fail_at_call", [4, 5])  # resume from iteration 2 (stage 1) or 4 (stage 2)
@pytest.mark.parametrize("stage2_optimizer", ["continue", "fresh"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, line_events, monkeypatch, fail_at_call,
                                                     stage2_optimizer):
    straight = train(tiny_config(tmp_path, out_dir=str(tmp_path / "a"), stage2_optimizer=stage2_optimizer))
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "b"), stage2_optimizer=stage2_optimizer)
    crash_at_loss_call(monkeypatch, cfg, fail_at_call)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    resumed = train(cfg, resume=True)

    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["iteration"] == b["iteration"] == 6 and a["stage"] == b["stage"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert all(torch.equal(va[s], vb[s]) for s in va)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows_a = list(csv.DictReader(open(tmp_path / "a" / "losses.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "losses.csv")))
    assert [r["iteration"] for r in rows_b] == [str(i) for i in range(1, 7)]
    assert [r["total"] for r in rows_a] == [r["total"] for r in rows_b]


def test_stage3_resume_is_bit_identical(tmp_path, line_events, monkeypatch):
    kw = {"stage1_iterations": 1, "stage2_iterations": 2, "stage3_iterations": 3}
    straight = torch.load(train(tiny_config(tmp_path, out_dir=str(tmp_path / "a"), **kw)), weights_only=True)
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "b"), **kw)
    crash_at_loss_call(monkeypatch, cfg, 6)  # the checkpoint of iteration 4 (stage 3) is the last one
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["stage"] == 3
    resumed = torch.load(train(cfg, resume=True), weights_only=True)
    assert resumed["iteration"] == straight["iteration"] == 6
    for k in straight["model"]:
        assert torch.equal(straight["model"][k], resumed["model"][k]), k


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes_identically(tmp_path, line_events):
    straight = train(tiny_config(tmp_path, out_dir=str(tmp_path / "a")))
    cfg = tiny_config(tmp_path, out_dir=str(tmp_path / "b"), max_minutes=1e-9)  # spent after one iteration
    for expected in (1, 2):  # each call runs one iteration, checkpoints it and stops
        path = train(cfg, resume=True)
        assert torch.load(path, weights_only=True)["iteration"] == expected and not finished(path)
    done = train(tiny_config(tmp_path, out_dir=str(tmp_path / "b")), resume=True)
    assert finished(done) and finished(straight)
    a, b = torch.load(straight, weights_only=True), torch.load(done, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    rows = list(csv.DictReader(open(tmp_path / "b" / "losses.csv")))
    assert [r["iteration"] for r in rows] == [str(i) for i in range(1, 7)]
    with pytest.raises(ValueError, match="max_minutes"):
        tiny_config(tmp_path, max_minutes=-1)


def test_non_finite_loss_stops_before_any_update(tmp_path, line_events, monkeypatch):
    original = SPICELoss.__call__

    def poisoned(self, outputs, batch):
        return {k: v * float("nan") for k, v in original(self, outputs, batch).items()}

    model = build_model({"filters": 4, "depth": 2, "reps": 1, "spatial_size": 24, "leaky_slope": 0.33,
                         "backend": "torch"})
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    monkeypatch.setattr(SPICELoss, "__call__", poisoned)
    with pytest.raises(FloatingPointError, match=r"stage 2: non-finite loss .* on events"):
        train_step(model, opt, SPICELoss(), collate(line_events[:2]))
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # no optimiser step
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(FloatingPointError, match=r"^iteration 1, stage 1: non-finite loss"):
        train(tiny_config(tmp_path))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training_is_finite_and_loads_on_cpu(tmp_path, line_events):
    """Both stages on CUDA under bf16 autocast: every logged loss finite; the checkpoint loads on the CPU."""
    path = train(tiny_config(tmp_path, device="cuda", bf16=True))
    rows = list(csv.DictReader(open(tmp_path / "run" / "losses.csv")))
    assert [int(r["stage"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(np.isfinite(float(r[t])) for r in rows for t in ("total", "emb", "mask", "seed"))
    model = load_model(path, "cpu")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    out = model(collate([line_events[0]]))
    assert all(torch.isfinite(v).all() for v in out.values())


def test_losses_csv_checkpoint_contents_and_load_model(tmp_path, line_events):
    cfg = tiny_config(tmp_path)
    path = train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run" / "losses.csv")))
    assert list(rows[0]) == ["iteration", "stage", "total", "emb", "mask", "smoothing", "inter", "seed", "lr",
                             "seconds"]
    assert [int(r["stage"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(np.isfinite(float(r[t])) for r in rows for t in ("total", "emb", "seed"))
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "stage", "iteration", "config", "rng", "sampler"} <= set(state)
    assert TrainConfig.from_dict(state["config"]) == cfg
    model = load_model(path)
    assert not model.training
    assert not list(path.parent.glob("*.tmp"))


def test_cli_main(tmp_path, line_events):
    from spice.cli import main
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path).to_dict()))
    assert main(["train", "--config", str(path), "--set", "stage2_iterations=1",
                 "--set", f"out_dir={tmp_path / 'cli'}"]) == 0
    assert torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["iteration"] == 4
    assert main(["train", "--config", str(path), "--set", "stage2_iterations=2", "--resume",
                 "--set", f"out_dir={tmp_path / 'cli'}"]) == 0
    assert torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["iteration"] == 5


def test_synthetic_data_path(tmp_path):
    cfg = tiny_config(tmp_path, stage1_iterations=1, stage2_iterations=1,
                      model={"filters": 4, "depth": 2, "reps": 1, "backend": "torch"},
                      data={"synthetic": {"n_events": 2, "spatial_size": 64, "seed": 0}})
    state = torch.load(train(cfg), weights_only=True)
    assert state["model_args"]["spatial_size"] == 64 and state["iteration"] == 2


# ---------------------------------------------------------------- overfitting a few events
@pytest.mark.slow
def test_overfit_few_events_reaches_ari_095(tmp_path):
    """A small SPICE trained on 3 synthetic 64^3 events clusters those events (greedy clustering,
    fixed thresholds s0 = 0.5, p0 = 0.3) with ARI >= 0.95 per class, averaged over (event, class)."""
    from spice.cluster import cluster_event
    from spice.data.event import collate
    from spice.data.synthetic import generate
    from spice.metrics import ari

    spec = {"n_events": 3, "spatial_size": 64, "seed": 0}
    cfg = tiny_config(tmp_path, model={"filters": 8, "depth": 3, "reps": 1, "backend": "torch"},
                      data={"synthetic": spec}, stage1_iterations=150, stage2_iterations=150, batch_size=3,
                      checkpoint_every=1000, seed=0)
    start = time.perf_counter()
    model = load_model(train(cfg))
    seconds = time.perf_counter() - start
    scores = []
    for event in generate(**spec):
        with torch.no_grad():
            outputs = model(collate([event]))
        pred = cluster_event(outputs, torch.from_numpy(event.semantic), {c: (0.5, 0.3) for c in range(5)}).numpy()
        for c in np.unique(event.semantic):
            keep = (event.semantic == c) & (event.instance >= 0)
            scores.append(ari(event.instance[keep], pred[keep]))
    print(f"overfit: {len(scores)} (event, class) pairs, mean ARI {np.mean(scores):.4f}, "
          f"min {np.min(scores):.4f}, training {seconds:.1f} s")
    assert len(scores) >= 6
    assert np.mean(scores) >= 0.95 and np.min(scores) >= 0.8

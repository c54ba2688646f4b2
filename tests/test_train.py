"""The training job: variants, exact resume, distributed drift, bad input, non-finite loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import TINY_MODEL, TINY_SOURCE, job
from tokendrift.cli import main as cli
from tokendrift.core import distributed
from tokendrift.core.checkpoint import load_model_dir, save_model_dir
from tokendrift.core.data import make_source
from tokendrift.core.model import DiT, DiTConfig
from tokendrift.jobs import train as trainlib
from tokendrift.jobs import train_state


def weights(folder: Path) -> dict:
    return {
        **{f"raw.{k}": v for k, v in load_file(folder / "model.safetensors").items()},
        **{f"ema.{k}": v for k, v in load_file(folder / "ema.safetensors").items()},
    }


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- variants


@pytest.mark.parametrize("diffusion", ["mdlm", "duo"])
@pytest.mark.parametrize(
    "objective",
    [
        {"loss": "feature_l2"},
        {"loss": "feature_l2", "lift": "hard"},
        {"loss": "logit_kl"},
        {"loss": "logit_l2", "base_loss": True},
        {"loss": "feature_l2", "base_loss": True, "ratio": [2.0, 1.0], "queue_size": 1},
    ],
)
def test_tokendrift_variants_train_and_log(tmp_path, init_mdlm, init_duo, diffusion, objective):
    init = init_mdlm if diffusion == "mdlm" else init_duo
    out = tmp_path / "run"
    last = trainlib.train(job(init, steps=3, objective=objective), out, progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for key in [
        "loss",
        "drift_loss",
        "grad_norm",
        "lr",
        "step_time_s",
        "tokens_per_s",
        "drift_norm/tau=0.02",
        "drift_norm/tau=0.05",
        "drift_norm/tau=0.2",
    ]:
        assert key in last and torch.isfinite(torch.tensor(last[key])), key
    assert ("base_loss" in last) == bool(objective.get("base_loss"))
    # the generator moved, the checkpoint is a model folder that sampling can load
    model, meta = load_model_dir(out / "checkpoints" / "step_000003", weights="raw")
    start, _ = load_model_dir(init, weights="raw")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    assert meta["diffusion"] == diffusion and meta["step"] == 3 and meta["variant"] == "tokendrift"


def test_continuation_uses_base_loss_only(tmp_path, init_mdlm):
    last = trainlib.train(job(init_mdlm, variant="continuation", steps=2), tmp_path / "c", progress=False)
    assert "base_loss" in last and "drift_loss" not in last
    assert last["loss"] == pytest.approx(last["base_loss"], rel=1e-6)


def test_encoder_stays_frozen(tmp_path, init_mdlm):
    s = trainlib.build(trainlib.resolve_config(job(init_mdlm)))
    before = {k: v.clone() for k, v in s.encoder.state_dict().items()}
    assert all(not p.requires_grad for p in s.encoder.parameters())
    stats: dict = {}
    g = torch.Generator().manual_seed(0)
    x0 = s.source.batch("train", 0, 2)
    loss = trainlib.micro_step(s, s.model, x0, g, stats)
    loss.backward()
    assert all(p.grad is None for p in s.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.model.parameters())
    for k, v in s.encoder.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(s.queues["real"]) == 2 and len(s.queues["gen"]) == 2


# ----------------------------------------------------------------------------- checkpoints and resume


def test_checkpoints_at_listed_steps_with_config_digest(tmp_path, init_mdlm):
    out = tmp_path / "run"
    trainlib.train(job(init_mdlm, steps=5, checkpoint_steps=[1, 3], save_every=0), out, progress=False)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_000001", "step_000003", "step_000005"]
    meta = json.loads((out / "checkpoints/step_000003/meta.json").read_text())
    digest = json.loads((out / "config.json").read_text())["config_digest"]
    assert meta["config_digest"] == digest and len(digest) == 16
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("stop_after", [1, 3, 4])
def test_resume_is_bitwise_exact(tmp_path, init_mdlm, stop_after):
    cfg = job(init_mdlm, steps=6, save_every=2)
    full = tmp_path / "full"
    trainlib.train(cfg, full, progress=False)
    part = tmp_path / "part"
    trainlib.train(cfg, part, stop_after=stop_after, progress=False)  # "killed" right after this step
    trainlib.train(cfg, part, progress=False)  # resumes from checkpoints/last (or from scratch)
    assert_bitwise_equal(weights(full / "checkpoints/step_000006"), weights(part / "checkpoints/step_000006"))
    state_a = torch.load(full / "checkpoints/step_000006/train_state.pt", weights_only=True)
    state_b = torch.load(part / "checkpoints/step_000006/train_state.pt", weights_only=True)
    for q in ("real", "gen"):
        assert torch.equal(state_a["queues"][q]["buffer"], state_b["queues"][q]["buffer"])
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated or missing metric lines after the resume


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_resume_hands_cpu_rng_states_and_adamw_steps_where_a_fresh_adamw_keeps_them(tmp_path, init_mdlm, target):
    """The resume path for a job on ``target`` (no GPU needed: the values handed on are checked).
    Generator.set_state and torch.cuda.set_rng_state take CPU byte tensors, for CUDA generators
    too; AdamW (neither capturable nor fused) keeps its ``step`` counts on the CPU, where
    Optimizer.load_state_dict leaves them: a CUDA ``step`` costs a host sync per parameter."""
    out = tmp_path / "run"
    trainlib.train(job(init_mdlm, steps=2, save_every=0), out, progress=False)
    ckpt = out / "checkpoints/step_000002"
    saved = torch.load(ckpt / "train_state.pt", weights_only=True)
    if target == "cuda":  # what a CUDA job writes beside: its CUDA RNG state (a CPU byte tensor)
        saved["rng_cuda"] = torch.get_rng_state()
        torch.save(saved, ckpt / "train_state.pt")
    state = train_state.read_train_state(ckpt, torch.device(target))  # map_location=cuda would fail here
    for key in ("rng_noise", "rng_cpu") + (("rng_cuda",) if target == "cuda" else ()):
        assert state[key].device.type == "cpu" and state[key].dtype == torch.uint8, key
        assert torch.equal(state[key], saved[key]), key
    assert ("rng_cuda" in state) == (target == "cuda")
    # a fresh AdamW of this job, after one step: where it keeps `step`
    s = trainlib.build(trainlib.resolve_config(job(init_mdlm)))
    fresh = train_state.make_state(s)
    assert not any(g["capturable"] or g["fused"] for g in fresh.optimizer.param_groups)
    for p in fresh.model.parameters():
        p.grad = torch.ones_like(p)
    fresh.optimizer.step()
    home = next(iter(fresh.optimizer.state.values()))["step"]
    steps = [v["step"] for v in state["optimizer"]["state"].values()]
    assert steps and all(t.device == home.device == torch.device("cpu") and t.dtype == home.dtype for t in steps)
    # the consumers take them as they are
    noise = torch.Generator()
    noise.set_state(state["rng_noise"])
    fresh.optimizer.load_state_dict(state["optimizer"])
    assert all(v["step"].device.type == "cpu" and float(v["step"]) == 2 for v in fresh.optimizer.state.values())


def test_a_finished_run_reran_writes_nothing(tmp_path, init_mdlm):
    # a rerun of a finished job (the same command, e.g. a bench pretraining what exists) must not
    # touch done.json: Snakemake would rerun everything downstream of the newer file
    out = tmp_path / "run"
    cfg = job(init_mdlm, steps=3, save_every=2)
    last = trainlib.train(cfg, out, progress=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert trainlib.train(cfg, out, progress=False) == last
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_resume_refuses_other_config(tmp_path, init_mdlm):
    out = tmp_path / "run"
    trainlib.train(job(init_mdlm, steps=4), out, stop_after=2, progress=False)
    with pytest.raises(trainlib.TokenDriftError, match="another config"):
        trainlib.train(job(init_mdlm, steps=4, seed=7), out, progress=False)


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_via_cli(tmp_path, init_mdlm):
    """A real kill -9 at a random step; the rerun of the same command ends bitwise equal."""
    cfg = job(init_mdlm, steps=14, save_every=3)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # same threads in every process: same float reductions

    def command(out):
        return [sys.executable, "-m", "tokendrift.cli", "train", "--config", str(cfg_file), "--out", str(out)]

    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(command(full), env=env, check=True, stderr=subprocess.DEVNULL)
    kill_at = int(torch.randint(4, 12, (1,)))
    proc = subprocess.Popen(command(part), env=env, stderr=subprocess.DEVNULL)
    metrics = part / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_at:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (part / "checkpoints/step_000014").exists()
    subprocess.run(command(part), env=env, check=True, stderr=subprocess.DEVNULL)
    assert_bitwise_equal(weights(full / "checkpoints/step_000014"), weights(part / "checkpoints/step_000014"))


# ----------------------------------------------------------------------------- data order and EMA start


def _spy_batches(monkeypatch) -> list:
    """Record every train batch the job draws: (index, seed, batch)."""
    from tokendrift.core.data import SyntheticHMM

    seen, real = [], SyntheticHMM.batch

    def spy(self, split, index, batch_size, seed=None):
        x = real(self, split, index, batch_size, seed=seed)
        if split == "train":
            seen.append((index, seed, x.clone()))
        return x

    monkeypatch.setattr(SyntheticHMM, "batch", spy)
    return seen


def test_the_training_seed_drives_the_data_order_and_survives_a_resume(tmp_path, init_mdlm, monkeypatch):
    seen = _spy_batches(monkeypatch)
    trainlib.train(job(init_mdlm, variant="continuation", steps=2, seed=1), tmp_path / "s1", progress=False)
    one = list(seen)
    seen.clear()
    trainlib.train(job(init_mdlm, variant="continuation", steps=2, seed=2), tmp_path / "s2", progress=False)
    two = list(seen)
    # 2 steps of 2 micro-batches: data positions 0..3
    assert [(i, s) for i, s, _ in one] == [(k, 1) for k in range(4)] and [s for _, s, _ in two] == [2] * 4
    assert all(not torch.equal(a[2], b[2]) for a, b in zip(one, two))  # two seeds, two data orders
    # one seed: the same batch at every data position, with or without a kill and resume
    cfg = job(init_mdlm, variant="continuation", steps=6, save_every=2, seed=1)
    seen.clear()
    trainlib.train(cfg, tmp_path / "full", progress=False)
    full = {i: x for i, _, x in seen}
    seen.clear()
    trainlib.train(cfg, tmp_path / "part", stop_after=3, progress=False)
    trainlib.train(cfg, tmp_path / "part", progress=False)  # resumes at step 2: positions 4.. again
    assert sorted({i for i, _, _ in seen}) == sorted(full)
    assert all(torch.equal(x, full[i]) for i, _, x in seen)


def _released(path: Path, count: int | None) -> Path:
    """A released-like folder whose EMA weights differ from its raw weights, with an EMA count."""
    src = make_source(TINY_SOURCE)
    cfg = DiTConfig.preset("tiny", vocab_size=src.vocab_size + 1, length=src.length, **TINY_MODEL)
    torch.manual_seed(11)
    raw = DiT(cfg).state_dict()
    ema = {k: v + 0.05 * torch.randn_like(v) if v.dtype.is_floating_point else v for k, v in raw.items()}
    meta = {"diffusion": "mdlm", "source": src.config, "step": 0}
    if count is not None:
        meta["ema_num_updates"] = count
    save_model_dir(path, raw, ema, meta, config=cfg)
    return path


@pytest.mark.parametrize("start", ["restart", "continue"])
def test_ema_start_restart_warms_up_from_the_start_and_continue_keeps_the_released_ema(tmp_path, start):
    init = _released(tmp_path / "released", 10**6)
    out = tmp_path / start
    trainlib.train(
        job(init, variant="continuation", steps=1, init_weights="raw", optim={"ema": 0.9, "ema_start": start}),
        out,
        progress=False,
    )
    w1 = load_file(out / "checkpoints/step_000001/model.safetensors")
    ema1 = load_file(out / "checkpoints/step_000001/ema.safetensors")
    if start == "restart":  # shadow = the starting (raw) weights, decay min(0.9, 2/11) at update 1
        d, shadow, count = 2 / 11, load_file(init / "model.safetensors"), 1
    else:  # shadow = the released EMA, decay 0.9 (count 10^6 + 1)
        d, shadow, count = 0.9, load_file(init / "ema.safetensors"), 10**6 + 1
    for k in w1:
        assert torch.allclose(ema1[k], d * shadow[k] + (1 - d) * w1[k], atol=1e-6), k
    meta = json.loads((out / "checkpoints/step_000001/meta.json").read_text())
    assert meta["ema_num_updates"] == count  # what a later `continue` from this checkpoint reads


def test_ema_continue_resumes_exactly_and_refuses_an_init_without_a_count(tmp_path, capsys):
    init = _released(tmp_path / "released", 500)
    cfg = job(init, steps=4, save_every=2, optim={"ema_start": "continue"})
    trainlib.train(cfg, tmp_path / "full", progress=False)
    trainlib.train(cfg, tmp_path / "part", stop_after=3, progress=False)
    trainlib.train(cfg, tmp_path / "part", progress=False)
    assert_bitwise_equal(
        weights(tmp_path / "full/checkpoints/step_000004"), weights(tmp_path / "part/checkpoints/step_000004")
    )
    assert json.loads((tmp_path / "full/checkpoints/step_000004/meta.json").read_text())["ema_num_updates"] == 504
    bare = _released(tmp_path / "bare", None)
    for over, message in [
        ({"init": str(bare)}, "ema_num_updates"),
        (
            {
                "init": None,
                "diffusion": "mdlm",
                "source": TINY_SOURCE,
                "model": {"preset": "tiny"},
                "variant": "continuation",
            },
            "optim.ema_start",
        ),
    ]:
        out = tmp_path / "refused"
        rc = cli(["train", "--config", _write_cfg(tmp_path, {**cfg, **over}), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and not out.exists()


# ----------------------------------------------------------------------------- non-finite loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, init_mdlm, monkeypatch):
    out = tmp_path / "run"
    real = trainlib.drift_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] > 6 else value  # step 4 (2 micro-batches per step)

    monkeypatch.setattr(trainlib, "drift_loss", poisoned)
    with pytest.raises(trainlib.TokenDriftError, match=r"non-finite loss .* step 4.*last good checkpoint is .*last"):
        trainlib.train(job(init_mdlm, steps=6, save_every=2), out, progress=False)
    meta = json.loads((out / "checkpoints/last/meta.json").read_text())
    assert meta["step"] == 2
    good = weights(out / "checkpoints/last")
    assert all(torch.isfinite(v).all() for v in good.values() if v.dtype.is_floating_point)


# ----------------------------------------------------------------------------- bad input


def _write_cfg(tmp_path, cfg) -> str:
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(cfg))
    return str(f)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"variant": "sharpen"}, "variant"),
        ({"objective": {"queue_size": 0}}, "objective.queue_size"),
        ({"objective": {"ratio": [0, 0]}}, "ratio"),
        ({"objective": {"temperatures": []}}, "temperatures"),
        ({"objective": {"temperatures": [0.05, -0.1]}}, "temperatures"),
        ({"objective": {"alpha": 0}}, "alpha"),
        ({"objective": {"loss": "logit_mse"}}, "objective.loss"),
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"steps": 0}, "steps"),
        ({"global_batch": 3}, "global_batch"),
        ({"init": "/nonexistent/ckpt"}, "/nonexistent/ckpt"),
        ({"bogus_key": 1}, "bogus_key"),
    ],
)
def test_bad_config_is_refused_and_nothing_written(tmp_path, init_mdlm, capsys, over, message):
    out = tmp_path / "out"
    rc = cli(["train", "--config", _write_cfg(tmp_path, job(init_mdlm, **over)), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "over, key",
    [
        ({"objective": {"alpha": float("nan")}}, "objective.alpha"),
        ({"objective": {"temperatures": [0.05, float("inf")]}}, "objective.temperatures.1"),
        ({"objective": {"floor": float("inf")}}, "objective.floor"),
        ({"optim": {"lr": float("nan")}}, "optim.lr"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, init_mdlm, capsys, over, key):
    """YAML writes .nan and .inf, and a schema's bounds let NaN through: the config check refuses them."""
    f, out = tmp_path / "cfg.yaml", tmp_path / "out"
    f.write_text(yaml.safe_dump(job(init_mdlm, **over)))
    rc = cli(["train", "--config", str(f), "--out", str(out)])
    assert rc == 2 and f"{key}: must be a finite number" in capsys.readouterr().err
    assert not out.exists()


def test_truncated_and_misshaped_checkpoints_are_refused(tmp_path, init_mdlm, capsys):
    import shutil

    trunc = tmp_path / "trunc"
    shutil.copytree(init_mdlm, trunc)
    for f in ("model.safetensors", "ema.safetensors"):
        data = (trunc / f).read_bytes()
        (trunc / f).write_bytes(data[: len(data) // 2])
    rc = cli(["train", "--config", _write_cfg(tmp_path, job(trunc)), "--out", str(tmp_path / "o1")])
    assert rc == 2 and "trunc" in capsys.readouterr().err and not (tmp_path / "o1").exists()

    shaped = tmp_path / "shaped"
    shutil.copytree(init_mdlm, shaped)
    for f in ("model.safetensors", "ema.safetensors"):
        state = load_file(shaped / f)
        state["vocab_embed.embedding"] = state["vocab_embed.embedding"][:-1].contiguous()
        save_file(state, str(shaped / f))
    from tokendrift.core.records import job_files, record_text

    meta = json.loads((shaped / "meta.json").read_text())  # a consistent folder (its record matches), mis-shaped
    (shaped / "meta.json").write_text(record_text(meta, shaped, job_files(shaped, "meta.json")))
    rc = cli(["train", "--config", _write_cfg(tmp_path, job(shaped)), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2 and "vocab_embed.embedding" in err and not (tmp_path / "o2").exists()


def test_encoder_vocabulary_mismatch_is_refused(tmp_path, init_mdlm, capsys):
    src = make_source({**TINY_SOURCE, "vocab_size": 30})
    enc = DiT(DiTConfig.preset("tiny", vocab_size=src.vocab_size + 1, length=src.length, **TINY_MODEL))
    save_model_dir(
        tmp_path / "enc", enc.state_dict(), None, {"diffusion": "mdlm", "source": src.config}, config=enc.config
    )
    rc = cli(
        [
            "train",
            "--config",
            _write_cfg(tmp_path, job(init_mdlm, encoder=str(tmp_path / "enc"))),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "encoder" in err and "vocabulary" in err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- data parallel


def _dp_worker(rank, world, init, port, h_all, u_all, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        s = trainlib.build(trainlib.resolve_config(job(init, micro_batch=2, global_batch=4)))
        B = h_all.shape[1] // world
        # two micro-steps so the queues take part in the second one
        for it in range(2):
            h = h_all[it, rank * B : (rank + 1) * B].clone().requires_grad_(True)
            u = u_all[it, rank * B : (rank + 1) * B]
            loss = trainlib.drift_loss(s, h, u, None, None, {})
            loss.backward()
            torch.save({"loss": loss.detach(), "grad": h.grad}, Path(result_dir) / f"r{rank}_it{it}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_drift_equals_single_process(tmp_path, init_mdlm):
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    world, B = 2, 2
    h_all = torch.nn.functional.normalize(torch.randn(2, world * B, 64), dim=-1)
    u_all = torch.nn.functional.normalize(torch.randn(2, world * B, 64), dim=-1)
    port = _free_port()
    mp.start_processes(
        _dp_worker, args=(world, str(init_mdlm), port, h_all, u_all, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    # single process on the concatenated batch
    s = trainlib.build(trainlib.resolve_config(job(init_mdlm, micro_batch=4, global_batch=4)))
    for it in range(2):
        h = h_all[it].clone().requires_grad_(True)
        loss = trainlib.drift_loss(s, h, u_all[it], None, None, {})
        loss.backward()
        parts = [torch.load(tmp_path / f"r{r}_it{it}.pt", weights_only=True) for r in range(world)]
        # DDP averages gradients over ranks: the mean of the per-rank losses is the global loss,
        # and each rank's anchor gradients (-alpha V_i / B_local) are world x the global ones.
        assert torch.allclose(torch.stack([p["loss"] for p in parts]).mean(), loss.detach(), atol=1e-6)
        grads = torch.cat([p["grad"] for p in parts]) / world
        assert torch.allclose(grads, h.grad, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_ranks_trains_end_to_end(tmp_path, init_mdlm):
    """The data-parallel path for real: DDP, no_sync accumulation, gathered drift, rank-0 writes."""
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    cfg = job(init_mdlm, steps=3, global_batch=4, micro_batch=1, save_every=0)  # 2 ranks x 1 x 2 accumulation
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(cfg))
    out = tmp_path / "dp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "tokendrift.cli",
            "train",
            "--config",
            str(f),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # written once, by rank 0
    state = torch.load(out / "checkpoints/step_000003/train_state.pt", weights_only=True)
    assert state["queues"]["gen"]["buffer"].shape[0] == 8  # 3 steps x 2 micro-steps x 2 ranks, capped at 8


def _train_rank(rank, world, cfg, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.init_distributed()
    try:
        trainlib.train(cfg, out, progress=False)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("variant", ["continuation", "tokendrift"])
def test_two_gloo_ranks_train_the_weights_of_one_process_on_the_gathered_batch(tmp_path, init_mdlm, variant):
    """2 ranks x micro-batch 2 x 2 accumulation steps = 1 process x micro-batch 4 x 2: the same
    corruption noise and dropout masks (drawn for all ranks' rows on every rank), the same
    gathered drift references, DDP's mean of the gradients. Equal up to float rounding."""
    import torch.multiprocessing as mp

    cfg = job(init_mdlm, variant=variant, steps=2, global_batch=8, micro_batch=2, save_every=0)
    port = _free_port()
    mp.start_processes(_train_rank, args=(2, cfg, str(tmp_path / "two"), port), nprocs=2, start_method="spawn")
    trainlib.train({**cfg, "micro_batch": 4}, tmp_path / "one", progress=False)
    two, one = (weights(tmp_path / d / "checkpoints/step_000002") for d in ("two", "one"))
    init = weights(Path(init_mdlm))
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    apart = max(float((two[k] - one[k]).abs().max()) for k in one)
    # float rounding (Adam turns it into ~1e-4 of an update where a gradient is near 0); another
    # noise draw or dropout mask moves the weights as far as training does (~1x)
    assert moved > 1e-4 and apart <= 1e-3 * moved, (apart, moved)


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _join_or_kill(ctx, deadline_s: float) -> bool:
    """Join spawned ranks; kill them and return False when they are still running at the deadline
    (a rank left waiting in a collective)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if ctx.join(timeout=1):
                return True
        except Exception:  # a rank died with an error: its result file says what
            return True
    for p in ctx.processes:
        p.kill()
    return False


def _nan_rank(rank, world, cfg, out, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if rank == 1:  # rank 1's loss turns NaN at step 2, micro-batch 1
        real, calls = trainlib.drift_loss, {"n": 0}

        def poisoned(*a, **k):
            calls["n"] += 1
            value = real(*a, **k)
            return value * float("nan") if calls["n"] == 4 else value

        trainlib.drift_loss = poisoned
    distributed.init_distributed("cpu")
    try:
        trainlib.train(cfg, out, progress=False)
        Path(result_dir, f"r{rank}.txt").write_text("finished")
    except trainlib.TokenDriftError as e:
        Path(result_dir, f"r{rank}.txt").write_text(str(e))
    finally:
        torch.distributed.destroy_process_group()


def test_a_non_finite_loss_on_one_of_two_gloo_ranks_stops_both_without_a_hang(tmp_path, init_mdlm):
    """Before, the rank with the NaN raised at once and the other waited in the next collective."""
    import torch.multiprocessing as mp

    cfg = job(init_mdlm, steps=4, global_batch=4, micro_batch=1, save_every=1)  # 2 ranks x 1 x 2 accumulation
    out = tmp_path / "run"
    ctx = mp.start_processes(
        _nan_rank, args=(2, cfg, str(out), _free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=False
    )
    assert _join_or_kill(ctx, 240), "a rank hung after the non-finite loss"
    msgs = [(tmp_path / f"r{r}.txt").read_text() for r in range(2)]
    for m in msgs:
        assert "non-finite loss at step 2, micro-batch 1 of rank 1" in m and "on all 2 rank(s)" in m, m
        assert m.endswith(str(out / "checkpoints" / "last")), m
    assert "loss nan" in msgs[1] and "reported by rank 1" in msgs[0]
    assert json.loads((out / "checkpoints/last/meta.json").read_text())["step"] == 1
    good = weights(out / "checkpoints/last")
    assert all(torch.isfinite(v).all() for v in good.values() if v.dtype.is_floating_point)


def _pretrain_rank(rank, world, cfg_file, out, port, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from tokendrift.jobs import pretrain

    real, seen = pretrain.train, []

    def spy(*a, **k):
        dist = torch.distributed
        seen.append(dist.get_world_size() if dist.is_initialized() else 1)
        return real(*a, **k)

    pretrain.train = spy
    rc = cli(["pretrain", "mdlm", "--config", cfg_file, "--out", out])
    Path(result_dir, f"r{rank}.json").write_text(json.dumps({"rc": rc, "world": seen}))


def test_pretrain_joins_the_process_group_and_rank_0_writes_alone(tmp_path):
    """pretrain_start asks for 4 tasks: the ranks train one model together (2 gloo ranks x micro-batch
    1 = one process x micro-batch 2) and only rank 0 writes; before, each trained its own copy and
    raced on the same files."""
    import torch.multiprocessing as mp

    model = {k: v for k, v in TINY_MODEL.items()}
    cfg = {
        "steps": 2,
        "global_batch": 4,
        "micro_batch": 1,
        "device": "cpu",
        "seed": 2,
        "save_every": 0,
        "source": TINY_SOURCE,
        "model": model,
        "optim": {"lr": 1e-3, "warmup_steps": 0},
    }
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(cfg))
    ctx = mp.start_processes(
        _pretrain_rank,
        args=(2, str(f), str(tmp_path / "two"), _free_port(), str(tmp_path)),
        nprocs=2,
        start_method="spawn",
        join=False,
    )
    assert _join_or_kill(ctx, 240), "pretraining ranks hung"
    for r in range(2):
        assert json.loads((tmp_path / f"r{r}.json").read_text()) == {"rc": 0, "world": [2]}
    steps = [json.loads(x)["step"] for x in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # one writer
    from tokendrift.jobs.pretrain import pretrain_backbone

    pretrain_backbone("mdlm", {**cfg, "micro_batch": 2}, str(tmp_path / "one"))
    two, one = (weights(tmp_path / d / "checkpoints/step_000002") for d in ("two", "one"))
    apart = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert apart < 1e-4, apart  # the same training, up to float rounding


# ----------------------------------------------------------------------------- host syncs


SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "__format__")


def count_host_syncs(monkeypatch) -> dict:
    """Count the calls that read a tensor on the host (a GPU-to-CPU sync on CUDA) made from
    tokendrift's own code; torch's own (AdamW's CPU ``step``) are not counted."""
    import tokendrift

    pkg = str(Path(tokendrift.__file__).parent)
    counts: dict = {}

    def wrap(name, real):
        def counted(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(pkg):
                counts[name] = counts.get(name, 0) + 1
            return real(self, *a, **k)

        return counted

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return counts


def test_the_training_loop_reads_tensors_once_per_step_and_metrics_every_log_every(tmp_path, init_mdlm, monkeypatch):
    """No host read in a micro-step (before: float() of each logged term, isfinite and the loss:
    7 per micro-step with the base loss); one per step, the all-reduced non-finite flags; the
    metrics line's values read together every log_every steps (BENCHMARKS.md, "Host syncs")."""
    total = {}
    for steps, log_every in ((1, 1), (3, 3), (3, 1)):  # 2 micro-batches per step
        counts = count_host_syncs(monkeypatch)
        cfg = job(init_mdlm, objective={"base_loss": True}, steps=steps, save_every=0, log_every=log_every)
        trainlib.train(cfg, tmp_path / f"s{steps}_{log_every}", progress=False)
        total[steps, log_every] = sum(counts.values())
        monkeypatch.undo()
    assert total[3, 3] - total[1, 1] == 2, total  # 2 more steps, 4 more micro-steps: one read per step
    assert total[3, 1] - total[3, 3] == 2, total  # 2 more metrics lines: one read each


@pytest.mark.parametrize("device,backend", [("cuda", "nccl"), ("cpu", "gloo")])
def test_the_rank_sets_its_device_before_the_process_group_and_the_backend_follows_it(monkeypatch, device, backend):
    """The device is set before init_process_group (NCCL binds the current device), and the
    backend comes from the resolved device, not from torch.cuda.is_available(): a device: cpu job
    on a GPU node runs gloo."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the task's narrowed mask
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b, **k: calls.append(("init", b)))
    got = distributed.init_distributed(device)
    want = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    assert got == want
    assert calls == ([("set_device", want)] if device == "cuda" else []) + [("init", backend)]


def test_the_evaluator_refuses_several_ranks(tmp_path, monkeypatch, capsys):
    """The evaluator trains on one process: a multi-task launch fails at once, writing nothing."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    out = tmp_path / "ev"
    assert cli(["pretrain", "evaluator", "--out", str(out)]) == 2
    assert "trains on one process, but WORLD_SIZE=4" in capsys.readouterr().err and not out.exists()

"""Released-checkpoint loading (Lightning .ckpt, HF safetensors) and our model folders."""

from __future__ import annotations

import collections
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from tokendrift.cli import main as cli
from tokendrift.core.checkpoint import CheckpointError, load_into, load_model_dir, read_external, save_model_dir
from tokendrift.core.model import DiT, DiTConfig

CFG = DiTConfig.preset("tiny", vocab_size=13, length=8, hidden_size=32, n_heads=4, cond_dim=16)
MARKER = os.path.join(os.path.dirname(__file__), "..", ".pickle_code_ran")


class Malicious:
    """Unpickling this would run os.system; the loader must never call it."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def random_model(seed=0) -> DiT:
    torch.manual_seed(seed)
    m = DiT(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()


def write_lightning(path, model: DiT, ema: DiT):
    state = collections.OrderedDict(("backbone." + k, v) for k, v in model.state_dict().items())
    state["noise.dummy"] = torch.zeros(1)  # non-backbone keys are dropped
    ckpt = {
        "state_dict": state,
        "ema": {"shadow_params": [p.detach().clone() for p in ema.parameters()], "num_updates": 10, "decay": 0.9999},
        "hyper_parameters": {"config": Malicious()},
        "global_step": 5,
        "epoch": 0,
    }
    torch.save(ckpt, path)


def logits(model, seed=1):
    x = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(seed))
    return model(x)


def test_lightning_ckpt_loads_without_running_pickled_code(tmp_path):
    if os.path.exists(MARKER):
        os.remove(MARKER)
    raw, ema = random_model(0), random_model(1)
    write_lightning(tmp_path / "last.ckpt", raw, ema)
    fresh = DiT(CFG).eval()
    load_into(fresh, read_external(tmp_path / "last.ckpt", ema=False, model=fresh))
    assert torch.equal(logits(fresh), logits(raw))
    load_into(fresh, read_external(tmp_path / "last.ckpt", ema=True, model=fresh))
    assert torch.equal(logits(fresh), logits(ema))
    assert not os.path.exists(MARKER), "unpickling ran code from the checkpoint"


def test_hf_safetensors_with_backbone_keys(tmp_path):
    model = random_model(2)
    save_file(
        {"backbone." + k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    fresh = DiT(CFG).eval()
    load_into(fresh, read_external(tmp_path / "model.safetensors"))
    assert torch.equal(logits(fresh), logits(model))
    load_into(fresh, read_external(tmp_path))  # a folder holding model.safetensors
    assert torch.equal(logits(fresh), logits(model))


def test_mismatch_lists_missing_unexpected_and_misshaped_keys():
    model = random_model()
    state = dict(model.state_dict())
    del state["blocks.0.norm1.weight"]
    state["blocks.9.extra"] = torch.zeros(1)
    state["vocab_embed.embedding"] = torch.zeros(12, 32)
    with pytest.raises(CheckpointError) as e:
        load_into(DiT(CFG), state)
    msg = str(e.value)
    assert "missing keys: blocks.0.norm1.weight" in msg and "unexpected keys: blocks.9.extra" in msg
    assert "vocab_embed.embedding: checkpoint (12, 32) vs model (13, 32)" in msg


def test_missing_and_truncated_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        read_external(tmp_path / "nope.ckpt")
    model = random_model()
    write_lightning(tmp_path / "t.ckpt", model, model)
    data = (tmp_path / "t.ckpt").read_bytes()
    (tmp_path / "t.ckpt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="t.ckpt"):
        read_external(tmp_path / "t.ckpt", model=model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        read_external(tmp_path / "m.safetensors")


def test_model_folder_round_trip_and_weight_choice(tmp_path):
    raw, ema = random_model(3), random_model(4)
    save_model_dir(tmp_path / "m", raw.state_dict(), ema.state_dict(), {"diffusion": "mdlm", "source": {}}, config=CFG)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["ema.safetensors", "meta.json", "model.safetensors"]
    m, meta = load_model_dir(tmp_path / "m")
    assert torch.equal(logits(m), logits(ema)) and not m.training
    m, _ = load_model_dir(tmp_path / "m", weights="raw")
    assert torch.equal(logits(m), logits(raw))
    assert meta["model"] == CFG.to_dict()
    with pytest.raises(CheckpointError, match="meta.json"):
        load_model_dir(tmp_path)  # not a model folder


def test_import_command(tmp_path, capsys):
    raw, ema = random_model(5), random_model(6)
    write_lightning(tmp_path / "duo.ckpt", raw, ema)
    src = tmp_path / "src.json"
    src.write_text(json.dumps({"kind": "synthetic", "vocab_size": 12, "length": 8}))
    # preset "small" would not fit this tiny checkpoint: the error lists the mis-shaped keys
    rc = cli(
        ["checkpoint", "import", str(tmp_path / "duo.ckpt"), str(tmp_path / "out"), "--diffusion", "duo", "--no-ema"]
    )
    assert rc == 2 and "mis-shaped keys" in capsys.readouterr().err and not (tmp_path / "out").exists()
    rc = cli(["checkpoint", "import", str(tmp_path / "duo.ckpt"), str(tmp_path / "out"), "--diffusion", "duo"])
    err = capsys.readouterr().err
    assert rc == 2 and "duo.ckpt: ema.shadow_params has 50 tensors" in err and not (tmp_path / "out").exists()
    rc = cli(["checkpoint", "import", str(tmp_path / "missing.ckpt"), str(tmp_path / "out"), "--diffusion", "mdlm"])
    assert rc == 2 and "missing.ckpt" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_import_into_model_folder(tmp_path, monkeypatch):
    from tokendrift.core import checkpoint as ck

    raw, ema = random_model(5), random_model(6)
    write_lightning(tmp_path / "mdlm.ckpt", raw, ema)
    monkeypatch.setitem(
        DiTConfig.PRESETS, "testsize", dict(vocab_size=13, length=8, hidden_size=32, n_heads=4, n_blocks=4, cond_dim=16)
    )
    meta = ck.import_checkpoint(str(tmp_path / "mdlm.ckpt"), str(tmp_path / "out"), "mdlm", preset="testsize")
    model, meta2 = load_model_dir(tmp_path / "out")
    assert torch.equal(logits(model), logits(ema))
    assert meta2["origin_sha256"] == meta["origin_sha256"] and meta2["diffusion"] == "mdlm"
    # the EMA's update count and decay travel with its weights (train's optim.ema_start: continue)
    assert meta2["ema_num_updates"] == 10 and meta2["ema_decay"] == 0.9999
    raw_meta = ck.import_checkpoint(
        str(tmp_path / "mdlm.ckpt"), str(tmp_path / "raw"), "mdlm", preset="testsize", ema=False
    )
    assert "ema_num_updates" not in raw_meta  # raw weights: no EMA to continue

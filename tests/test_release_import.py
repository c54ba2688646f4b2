"""The released configs decide the architecture: `checkpoint import` of a Hugging Face folder
builds the DiT from its config.json (MDLM's and DUO's key names), and a config that also names a
preset or sizes must agree with it or the import stops, naming both values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.paper_files import write_hf_release, write_lightning_release, write_release_config
from tokendrift.cli import main as cli
from tokendrift.core import checkpoint as ck
from tokendrift.jobs.fetch import fetch_checkpoint

TINY = {"preset": "tiny", "vocab_size": 50, "hidden_size": 16, "n_blocks": 2, "n_heads": 2, "cond_dim": 8, "length": 16}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    states = {bb: write_hf_release(root / bb, bb, TINY, seed=3) for bb in ("mdlm", "duo")}
    return root, states


def logits(model, cond: bool):
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    return model(x, torch.full((2,), 0.5) if cond else None)


@pytest.mark.parametrize("bb", ["mdlm", "duo"])
def test_the_released_config_json_decides_the_dit(releases, tmp_path, bb):
    root, states = releases
    meta = ck.import_checkpoint(str(root / bb), str(tmp_path / "out"), bb)  # no preset, no sizes
    model, saved = ck.load_model_dir(tmp_path / "out")
    want = {
        "vocab_size": 50,
        "hidden_size": 16,
        "n_blocks": 2,
        "n_heads": 2,
        "cond_dim": 8,
        "length": 16,
        "dropout": 0.1,
        "time_conditioning": bb == "duo",
    }  # DUO's config has no such key: its training sets it
    assert saved["model"] == meta["model"] == want and meta["origin_config"] == str(root / bb / "config.json")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in states[bb].items())
    # the same through the file itself (an hf: import resolves to the .safetensors beside config.json)
    ck.import_checkpoint(str(root / bb / "model.safetensors"), str(tmp_path / "file"), bb, model_overrides=TINY)
    again, _ = ck.load_model_dir(tmp_path / "file")
    assert torch.equal(logits(model, bb == "duo"), logits(again, bb == "duo"))


@pytest.mark.parametrize(
    "bb, model, said",
    [
        (
            "mdlm",
            {"preset": "small"},
            "preset 'small' says cond_dim 128, {cfg} says cond_dim 8; preset 'small' says "
            "hidden_size 768, {cfg} says hidden_dim 16",
        ),
        ("duo", dict(TINY, cond_dim=128), "model.cond_dim says cond_dim 128, {cfg} says cond_dim 8"),
        ("duo", dict(TINY, time_conditioning=False), "model.time_conditioning says time_conditioning False"),
    ],
)
def test_a_preset_or_size_that_disagrees_stops_the_import_naming_both(releases, tmp_path, capsys, bb, model, said):
    root, _ = releases
    rc = cli(
        [
            "checkpoint",
            "import",
            str(root / bb),
            str(tmp_path / "out"),
            "--diffusion",
            bb,
            "--model-json",
            json.dumps(model),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "model: the config and the released config disagree: " in err, err
    assert said.format(cfg=root / bb / "config.json") in err, err
    assert not (tmp_path / "out").exists()


def test_duos_default_cond_dim_is_not_taken_for_what_was_trained(releases, tmp_path):
    """DUOConfig's default cond_dim (129) is not the training configs' 128: a config.json that
    says 129 over 128-wide weights is a mismatch the weights name, never a silent default."""
    root, _ = releases
    folder = tmp_path / "duo129"
    shutil.copytree(root / "duo", folder)
    sizes = {k: v for k, v in TINY.items() if k != "preset"}
    write_release_config(folder, "duo", ck.DiTConfig.preset("tiny", **sizes), cond_dim=129)
    with pytest.raises(
        ck.CheckpointError, match=r"mis-shaped keys: .*sigma_map.mlp.0.bias: checkpoint \(8,\) vs model \(129,\)"
    ):
        ck.import_checkpoint(str(folder), str(tmp_path / "out"), "duo")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "mdlm"}, "model_type 'mdlm' is not the backbone's diffusion 'duo'"),
        ({"causal": True}, "causal: true"),
        ({"drop": "n_heads"}, r"lacks \['n_heads'\]"),
    ],
)
def test_a_released_config_that_does_not_describe_this_dit_is_refused(releases, tmp_path, change, message):
    root, _ = releases
    folder = tmp_path / "duo"
    shutil.copytree(root / "duo", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop(change.pop("drop", None), None)
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ck.CheckpointError, match=message):
        ck.import_checkpoint(str(folder), str(tmp_path / "out"), "duo")


def test_a_lightning_ckpt_without_config_json_takes_the_preset_and_sizes(tmp_path):
    ema = write_lightning_release(tmp_path / "duo.ckpt", "duo", TINY, seed=4)
    (tmp_path / "config.json").write_text("{}")  # a config.json beside a .ckpt is not the release's
    meta = ck.import_checkpoint(str(tmp_path / "duo.ckpt"), str(tmp_path / "out"), "duo", model_overrides=TINY)
    model, _ = ck.load_model_dir(tmp_path / "out")
    assert meta["origin_config"] is None and meta["model"]["time_conditioning"] is True
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())


def fake_hub(monkeypatch, tmp_path, repo_dir: Path, commit="c" * 40):
    """hf_hub_download at the edge: files of ``repo_dir`` served into a cache snapshot folder,
    a missing one answered with the Hub's 404 error."""
    import httpx2 as httpx  # the HTTP client huggingface_hub builds its errors from
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    snapshot = tmp_path / "hub" / "models--o--r" / "snapshots" / commit
    calls = []

    def download(repo_id, filename, **kw):
        calls.append(filename)
        if not (repo_dir / filename).exists():
            request = httpx.Request("GET", f"https://huggingface.co/{repo_id}/resolve/main/{filename}")
            raise RemoteEntryNotFoundError("404", response=httpx.Response(404, request=request))
        (snapshot / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_dir / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def test_an_hf_import_fetches_and_records_the_config_json_beside_the_weights(releases, tmp_path, monkeypatch, capsys):
    root, _ = releases
    calls = fake_hub(monkeypatch, tmp_path, root / "duo")
    m = fetch_checkpoint("hf:o/r/model.safetensors", "start_duo")
    assert calls == ["model.safetensors", "config.json"] and m["commit"] == "c" * 40
    assert [f["name"] for f in m["files"]] == ["config.json", "model.safetensors"]
    meta = ck.import_checkpoint("hf:o/r/model.safetensors", str(tmp_path / "out"), "duo")
    assert meta["model"]["hidden_size"] == 16 and meta["origin_config"].endswith("c" * 40 + "/config.json")
    bare = tmp_path / "bare"  # a repository without config.json: the preset and sizes decide
    bare.mkdir()
    shutil.copy(root / "duo" / "model.safetensors", bare / "model.safetensors")
    calls = fake_hub(monkeypatch, tmp_path / "b", bare)
    meta = ck.import_checkpoint("hf:o/r/model.safetensors", str(tmp_path / "out2"), "duo", model_overrides=TINY)
    assert calls == ["model.safetensors", "config.json"] and meta["origin_config"] is None
    # offline (a compute node), a config.json that was never fetched stops the import
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = cli(["checkpoint", "import", "hf:o/r/model.safetensors", str(tmp_path / "out3"), "--diffusion", "duo"])
    err = capsys.readouterr().err
    assert rc == 2 and "'hf:o/r/config.json'" in err and "not in the local Hugging Face cache" in err, err
    assert not (tmp_path / "out3").exists()

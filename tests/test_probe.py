"""The information-decay probe on models whose predictions are known."""

import json
import math

import pytest
import torch

from tests.conftest import TINY_MODEL, TINY_SOURCE
from tokendrift.cli import main as cli
from tokendrift.core.checkpoint import save_model_dir
from tokendrift.core.data import make_source
from tokendrift.core.model import DiT, DiTConfig
from tokendrift.jobs.probe import frequent_ids, position_stats, probe_checkpoint


def constant_model(path, diffusion: str, bias: torch.Tensor):
    """A DiT whose every weight is zero but the output bias: logits = bias at every position."""
    src = make_source(TINY_SOURCE)
    cfg = DiTConfig.preset(
        "tiny", vocab_size=src.vocab_size + 1, length=src.length, time_conditioning=diffusion == "duo", **TINY_MODEL
    )
    model = DiT(cfg)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["output_layer.linear.bias"] = bias.clone()
    save_model_dir(path, state, state, {"diffusion": diffusion, "source": src.config, "step": 0}, config=cfg)
    return path


def test_position_stats_match_a_hand_computation():
    # position 0: one-hot on token 0; position 1: uniform over 4; position 2: [0.5, 0.25, 0.25, 0]
    p = torch.tensor([[[1.0, 0, 0, 0], [0.25] * 4, [0.5, 0.25, 0.25, 0.0]]] * 3, dtype=torch.float64)
    s = position_stats(p, frequent=[0, 1], eos=3)
    assert s["top1"]["mean"] == pytest.approx([1.0, 0.25, 0.5])
    assert s["entropy"]["mean"] == pytest.approx([0.0, math.log(4), -0.5 * math.log(0.5) - 0.5 * math.log(0.25)])
    assert s["frequent_share"]["mean"] == pytest.approx([1.0, 0.5, 0.75])
    assert s["eos"]["mean"] == pytest.approx([0.0, 0.25, 0.0])
    assert s["top3_ids"][0][2][0] == 0 and s["top3_probs"][0][2] == pytest.approx([0.5, 0.25, 0.25])


@pytest.mark.parametrize("diffusion", ["mdlm", "duo"])
def test_probe_of_a_constant_model_gives_its_distribution_at_every_position(tmp_path, diffusion):
    src = make_source(TINY_SOURCE)
    V = src.vocab_size + 1
    bias = torch.linspace(-2, 2, V)
    ckpt = constant_model(tmp_path / diffusion, diffusion, bias)
    r = probe_checkpoint(str(ckpt), n_prompts=8, prompt_len=4, span=12, batch_size=3)
    p = torch.softmax(bias[: V - 1].double(), -1)  # the special id gets no mass
    want_ent = float(-(p * p.log()).sum())
    assert r["top1"]["mean"] == pytest.approx([float(p.max())] * 12, rel=1e-6)
    assert r["entropy"]["mean"] == pytest.approx([want_ent] * 12, rel=1e-6)
    freq = frequent_ids(src, 10)
    assert r["frequent_share"]["mean"] == pytest.approx([float(p[freq].sum())] * 12, rel=1e-6)
    assert [tok for tok, _ in r["example_top3"][0]] == src.decode(torch.tensor([[V - 2, V - 3, V - 4]]))[0].split()
    assert r["eos_id"] is None and "eos" not in r  # the synthetic language has no EOS
    assert ("uniform noise" in r["corruption"]) == (diffusion == "duo")


def test_cli_writes_the_files_and_refuses_bad_input(tmp_path, capsys):
    a = constant_model(tmp_path / "a", "mdlm", torch.zeros(25))
    b = constant_model(tmp_path / "b", "mdlm", torch.linspace(0, 1, 25))
    out = tmp_path / "probe"
    assert (
        cli(
            [
                "probe",
                "--checkpoint",
                f"start={a}",
                "--checkpoint",
                f"drift={b}",
                "--out",
                str(out),
                "--n-prompts",
                "4",
                "--prompt-len",
                "4",
                "--span",
                "8",
            ]
        )
        == 0
    )
    data = json.loads((out / "probe.json").read_text())
    assert set(data) == {"start", "drift"} and len(data["drift"]["top1"]["mean"]) == 8
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG" and (out / "probe.pdf").read_bytes()[:5] == b"%PDF-"
    assert "| 8 |" in (out / "top3.md").read_text()
    duo = constant_model(tmp_path / "d", "duo", torch.zeros(25))
    for args, msg in [
        (["--span", "64"], "exceeds"),
        (["--n-prompts", "0"], "n_prompts"),
        (["--checkpoint", f"x={tmp_path / 'nope'}"], "nope"),
        (["--checkpoint", f"d={duo}"], "backbone"),
        (["--checkpoint", "noequals"], "LABEL=PATH"),
    ]:
        bad = tmp_path / "bad"
        assert (
            cli(["probe", "--checkpoint", f"start={a}", "--prompt-len", "4", "--span", "8", *args, "--out", str(bad)])
            == 2
        )
        assert msg in capsys.readouterr().err and not bad.exists()


@pytest.mark.parametrize("diffusion", ["mdlm", "duo"])
@pytest.mark.parametrize("input_length, duo_time", [("block", "matched"), ("span", "matched"), ("block", 1.0)])
def test_probe_input_is_a_training_length_block_and_duo_is_told_the_matched_time(
    tmp_path, monkeypatch, diffusion, input_length, duo_time
):
    src = make_source(TINY_SOURCE)  # length 16
    ckpt = constant_model(tmp_path / diffusion, diffusion, torch.zeros(src.vocab_size + 1))
    calls = []
    real = DiT.forward

    def spy(self, x, sigma=None, **kw):
        calls.append((x.clone(), sigma.clone()))
        return real(self, x, sigma, **kw)

    monkeypatch.setattr(DiT, "forward", spy)
    r = probe_checkpoint(str(ckpt), n_prompts=4, prompt_len=4, span=8, input_length=input_length, duo_time=duo_time)
    x, sigma = calls[0]
    L = 16 if input_length == "block" else 12
    assert x.shape == (4, L) and r["input_length"] == L and len(r["top1"]["mean"]) == 8
    assert torch.equal(x[:, :4], src.batch("valid", 0, 4)[:, :4])  # the prompt is clean
    if diffusion == "mdlm":
        assert (x[:, 4:] == src.vocab_size).all() and (sigma == 0).all() and r["time"] is None
    else:
        alpha = 4 / L if duo_time == "matched" else 1e-3  # alpha_t = 1 - (1 - eps) t
        assert r["alpha_t"] == pytest.approx(alpha) and torch.allclose(sigma, torch.tensor(-math.log(alpha)))
        assert ("prompt is noise too" in r["corruption"]) == (duo_time == 1.0)


def test_probe_refuses_a_bad_duo_time(tmp_path):
    ckpt = constant_model(tmp_path / "d", "duo", torch.zeros(25))
    for bad in ("soon", 0, 1.5):
        with pytest.raises(Exception, match="duo_time"):
            probe_checkpoint(str(ckpt), n_prompts=2, prompt_len=4, span=8, duo_time=bad)

"""The DiT: shapes, features, conditioning, exact size of the 170M configuration."""

from __future__ import annotations

import pytest
import torch

from tokendrift.core.model import DiT, DiTConfig
from tokendrift.core.utils import TokenDriftError


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig.preset("tiny", vocab_size=11, length=8, hidden_size=32, n_heads=4, cond_dim=16, **kw))
    with torch.no_grad():  # adaLN-zero makes a fresh model constant: give it random weights
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return model.eval()


def test_small_preset_has_the_170m_parameter_count():
    with torch.device("meta"):
        model = DiT(DiTConfig.preset("small"))
    assert sum(p.numel() for p in model.parameters()) == 169_627_218
    assert model.embedding.shape == (50258, 768)


def test_logit_shapes_and_dtype():
    model = tiny()
    x = torch.randint(0, 11, (3, 8))
    logits = model(x)
    assert logits.shape == (3, 8, 11) and logits.dtype == torch.float32


def test_hidden_states_are_the_last_two_block_outputs():
    model = tiny()
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    x = torch.randint(0, 11, (2, 8))
    model(x)
    for h in hooks:
        h.remove()
    h_pen, h_fin = model.hidden_states(x)
    assert torch.equal(h_pen, seen[-2]) and torch.equal(h_fin, seen[-1])


def test_inputs_embeds_equal_token_ids_and_carry_gradient():
    model = tiny()
    x = torch.randint(0, 11, (2, 8))
    e = model.embedding[x].detach().requires_grad_(True)
    assert torch.equal(model(x), model(inputs_embeds=e))
    model.hidden_states(inputs_embeds=e)[1].sum().backward()
    assert e.grad is not None and e.grad.abs().sum() > 0


def test_time_conditioning():
    x = torch.randint(0, 11, (2, 8))
    off = tiny(time_conditioning=False)
    assert torch.equal(off(x, torch.full((2,), 3.0)), off(x))  # MDLM: sigma fed as 0
    on = tiny(time_conditioning=True)
    assert torch.equal(on(x, torch.zeros(2)), on(x))
    assert not torch.allclose(on(x, torch.full((2,), 3.0)), on(x))


def test_dropout_only_in_training_mode():
    model = tiny(dropout=0.5)
    x = torch.randint(0, 11, (2, 8))
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_attention_is_not_causal():
    model = tiny()
    x = torch.randint(0, 11, (1, 8))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % 11
    assert not torch.allclose(model(x)[0, 0], model(y)[0, 0])  # the first position sees the last


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(hidden_size=30, n_heads=4), "hidden_size"),
        (dict(n_blocks=1), "n_blocks"),
        (dict(dropout=1.0), "dropout"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_bad_config_names_field(kw, field):
    with pytest.raises(TokenDriftError, match=f"model.{field}"):
        DiTConfig.preset("tiny", **{"vocab_size": 10, **kw})


def test_unknown_preset_and_key():
    with pytest.raises(TokenDriftError, match="model.preset"):
        DiTConfig.preset("huge", vocab_size=10)
    with pytest.raises(TokenDriftError, match="depth"):
        DiTConfig.preset("tiny", vocab_size=10, depth=3)

"""The compress page's matrix names on other families: unambiguous (GPT-2's two c_proj), grouped by structure."""

import pytest

from analysis.changes import low_rank as cp
from tests.families import tiny_model


@pytest.mark.parametrize(
    "family,offered,mlp",
    [
        ("gpt2", ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"], ["c_fc", "mlp.c_proj"]),
        ("opt", ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"], ["fc1", "fc2"]),
        ("phi3", ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"], ["gate_up_proj", "down_proj"]),
        ("mixtral", ["q_proj", "k_proj", "v_proj", "o_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]),
    ],
)
def test_offered_names_resolve_to_one_matrix_each(family, offered, mlp):
    from components.compress import default_mlp, moe_note, projection_names

    model = tiny_model(family)
    assert projection_names(model) == offered and default_mlp(model) == mlp
    assert (moe_note(model) is not None) == (family == "mixtral")
    names, _ = cp.resolve_targets(model, mlp, [0])
    assert len(names) == len(mlp)  # 'mlp.c_proj' is GPT-2's MLP projection only, not attn.c_proj too
    assert {cp.group_of(n, model) for n in names} == ({"attn"} if family == "mixtral" else {"mlp"})
    assert [cp.group_of(n) for n in names] == [cp.group_of(n, model) for n in names]  # the name rule agrees

"""Family records: fused q/k/v layouts (against a dense weight update), attention modules that do
not call the registry, and skipped modules being named."""

from __future__ import annotations

import warnings

import pytest
import torch

import inducer
from inducer.core.families import SkippedAttentionWarning, UnsupportedModelError, find_attention_sites

from ..sweep.architectures import ARCHITECTURES


def _tiny(name: str):
    return next(a for a in ARCHITECTURES if a.name == name).build()


def _split(name: str, out: torch.Tensor, heads: int, kv_heads: int, p: int) -> dict[str, torch.Tensor]:
    """q, k, v from a fused projection's outputs, as each model's own forward splits them."""
    if name == "GPT-NeoX":  # view(..., H, 3p).chunk(3)
        q, k, v = out.view(*out.shape[:-1], heads, 3 * p).chunk(3, dim=-1)
    elif name == "Bloom":  # view(..., H, 3, p)
        q, k, v = out.view(*out.shape[:-1], heads, 3, p).unbind(-2)
    elif name == "Falcon":  # multi-query: view(..., H + 2, p), queries first
        fused = out.view(*out.shape[:-1], heads + 2, p)
        q, k, v = fused[..., :-2, :], fused[..., -2:-1, :], fused[..., -1:, :]
    else:  # Phi-3 (grouped-query), GPT-BigCode (multi-query): [Q | K | V]
        q, k, v = out.split((heads * p, kv_heads * p, kv_heads * p), dim=-1)
    return {"q": q, "k": k, "v": v}


@pytest.mark.parametrize("name", ["GPT-NeoX", "Bloom", "Falcon", "Phi-3", "GPT-BigCode"])
@pytest.mark.parametrize("role", ["q", "k", "v"])
def test_lora_on_a_fused_projection_changes_only_its_roles_outputs_as_a_dense_update(name, role):
    model = _tiny(name)
    site = find_attention_sites(model)[0]
    fused_name = {"GPT-NeoX": "query_key_value", "Bloom": "query_key_value", "Falcon": "query_key_value",
                  "Phi-3": "qkv_proj", "GPT-BigCode": "c_attn"}[name]
    layer = site.module.get_submodule(fused_name)
    heads, p = site.heads, site.head_dim
    kv_heads = {"Phi-3": 2, "GPT-BigCode": 1, "Falcon": 1}.get(name, heads)
    before = layer.weight.detach().clone()
    inducer.attach(model, inducer.LoRAConfig(r=2, alpha=2, targets=[role], layers=[0]))
    lora = layer.get_submodule(f"lora_{role}")
    with torch.no_grad():
        lora.b.normal_()
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        hooked = layer(x)
        inducer.merge(model)
        dense_update = layer.weight - before  # [out, in]
        merged = layer(x)
        inducer.unmerge(model)
    torch.testing.assert_close(merged, hooked, rtol=1e-5, atol=1e-5)
    expected = x @ (lora.a @ lora.b) * lora.scale  # the role's own outputs, in its layout
    parts = _split(name, hooked - torch.nn.functional.linear(x, before, layer.bias), heads, kv_heads, p)
    for other, part in parts.items():
        if other == role:
            torch.testing.assert_close(part.reshape(3, -1), expected, rtol=1e-5, atol=1e-5)
        else:
            assert part.abs().max() == 0, other
    rows = _split(name, dense_update.T, heads, kv_heads, p)  # the update's rows, split the same way
    assert all(rows[other].abs().max() == 0 for other in rows if other != role)


def test_attention_methods_refuse_unrouted_attention_at_attach_naming_the_class():
    model = _tiny("DeBERTa-v2")
    with pytest.raises(UnsupportedModelError, match="DisentangledSelfAttention does not call transformers' "
                                                    "attention registry.*use LoRA, adapters or BitFit"):
        inducer.attach(model, inducer.InducerConfig())
    assert not hasattr(model, "_inducer_state")
    for config in (inducer.LoRAConfig(r=2), inducer.AdapterConfig(placement="attn"), inducer.BitFitConfig()):
        inducer.detach(inducer.attach(model, config))


def test_partly_routed_models_warn_or_with_strict_refuse():
    model = _tiny("LongT5")  # local attention in the encoder, registry attention in the decoder
    with pytest.warns(SkippedAttentionWarning, match="LongT5LocalAttention does not call"):
        inducer.detach(inducer.attach(model, inducer.InducerConfig()))
    with pytest.raises(SkippedAttentionWarning, match="LongT5LocalAttention"):
        inducer.attach(model, inducer.PrefixConfig(length=2), strict=True)
    assert not hasattr(model, "_inducer_state")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedAttentionWarning)
        inducer.attach(model, inducer.LoRAConfig(r=2), strict=True)  # LoRA adapts every module


def test_registry_modules_whose_projection_is_unknown_are_named_not_skipped_silently():
    model = _tiny("Starcoder2")  # of no known family: found by its call to the registry
    for layer in model.model.layers:  # an unknown name for the output projection
        layer.self_attn.add_module("proj_out", layer.self_attn.o_proj)
        del layer.self_attn.o_proj
    with pytest.raises(UnsupportedModelError, match="no attention module"), \
            pytest.warns(SkippedAttentionWarning, match="Starcoder2Attention: no output projection"):
        find_attention_sites(model)


@pytest.mark.parametrize(("name", "projection"), [("DistilBERT", "out_lin"), ("ModernBERT", "Wo")])
def test_output_projections_of_distilbert_and_modernbert(name, projection):
    sites = find_attention_sites(_tiny(name))
    assert len(sites) == 2 and all(s.projection_name.endswith(projection) and s.routed for s in sites)


def test_methods_that_need_one_slice_refuse_a_per_head_fused_layout():
    with pytest.raises(UnsupportedModelError, match="query_key_value: the 'q' outputs .* spread over"):
        inducer.attach(_tiny("GPT-NeoX"), inducer.KernelMixConfig(r=2))


def test_a_per_head_fused_lora_exports_to_peft_and_back_with_the_same_outputs(tmp_path):
    base = _tiny("GPT-NeoX")
    ids = torch.randint(3, 90, (1, 7), generator=torch.Generator().manual_seed(0))
    model = inducer.attach(_tiny("GPT-NeoX"), inducer.LoRAConfig(r=2, targets=["q", "v"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".b"):
                parameter.normal_()
        expected = model(input_ids=ids).logits
    inducer.export_peft(model, tmp_path / "peft")
    imported = inducer.import_peft(base, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(imported(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_every_sweep_architecture_has_one_feed_forward_block_per_layer_of_the_model_width():
    import warnings

    from inducer.core.families import scan_attention
    from inducer.core.linear_targets import find_feed_forward_sites
    from tests.sweep.architectures import ARCHITECTURES

    for arch in ARCHITECTURES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = arch.build()
        modules = dict(model.named_modules())
        sites = find_feed_forward_sites(model)
        self_attention = [s for s in scan_attention(model)[0] if not s.is_cross]
        assert len(sites) == len(self_attention), arch.name
        for site in sites:
            assert site.width == 32, (arch.name, site.name)
            for name in site.first:  # the block's first layers read the model width...
                layer = modules[name]
                assert getattr(layer, "in_features", None) in (None, 32) and name.startswith(site.name)
            if site.last:  # ...and its last layer writes it
                assert getattr(modules[site.last], "out_features", 32) == 32, (arch.name, site.last)

"""``inducer serve``'s command line: its options, and one-line errors before anything starts."""

from __future__ import annotations

from tests.tiny import run_cli


def test_help_lists_the_options():
    output = run_cli("serve", "--help").output
    for option in ("--model", "--adapter", "--host", "--api-key", "--max-batch-size", "--max-wait-ms",
                   "--adapter-root", "--max-prompt-tokens", "--max-tokens", "--max-n", "--max-body-bytes"):
        assert option in output


def test_malformed_adapter_is_one_line(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path), "--adapter", "nodir", expect=2)
    assert "NAME=DIR" in result.output and "Traceback" not in result.output


def test_unknown_model_is_one_line(tmp_path):
    result = run_cli("serve", "--model", str(tmp_path / "missing"), expect=2)
    assert "cannot load model" in result.output and "Traceback" not in result.output


def test_an_adapter_for_another_base_is_refused_at_start(served, tmp_path):
    import inducer
    from tests.tiny import make_model

    model = make_model("gpt2", 50)
    inducer.attach(model, inducer.InducerConfig(r_k=1, r_v=1))
    inducer.save_adapter(model, tmp_path / "other")
    other = tmp_path / "other"
    result = run_cli("serve", "--model", str(served["base"]), "--adapter", f"x={other}", expect=2)
    assert "--adapter x=" in result.output and "base" in result.output

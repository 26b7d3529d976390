"""Bad inputs refused at the root (issue 12, classes 1-5, 8): models that are not decoder-only causal LMs, damaged
checkpoints, remote code from a recipe, destinations, and block lists; tiny random-weight models, no download."""

import json
import os
from pathlib import Path

import pytest

from analysis import destinations
from analysis.changes.remove_blocks import PruneError, parse_blocks
from analysis.model import loading as models
from analysis.model.architecture import ModelLoadError
from analysis.model.loading import ModelSpec
from analysis.workflow import preflight
from analysis.workflow import recipe as rc

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _find_converted() -> Path | None:
    roots = [Path(__file__).resolve().parents[2] / "cache" / "models"]
    if os.environ.get("LAYERSCOPE_CACHE"):  # the test session's cache (tests/conftest.py)
        roots.append(Path(os.environ["LAYERSCOPE_CACHE"]) / "models")
    for root in roots:
        for folder in sorted(root.glob("SmolLM2-*")):
            if all((folder / f).is_file() for f in TOKENIZER_FILES):
                return folder
    return None


def _converted_tokenizer() -> Path | None:
    """The bundled model's tokenizer files, converted once for this test session if no converted copy exists yet
    (a clean clone: the same conversion the session's ``lm`` fixture does, ~25 s)."""
    found = _find_converted()
    if found is None:
        models.load_model(ModelSpec(device="cpu"))
        found = _find_converted()
    return found


def _save(model, folder: Path, tokenizer: bool = False) -> Path:
    model.save_pretrained(folder)
    if tokenizer:
        src = _converted_tokenizer()
        if src is None:
            pytest.skip("the converted bundled model (its tokenizer) is not in cache/models")
        for f in TOKENIZER_FILES:
            (folder / f).write_bytes((src / f).read_bytes())
    return folder


def _tiny_llama(tmp_path, name="llama", **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        **kw,
    )
    return _save(LlamaForCausalLM(cfg), tmp_path / name, tokenizer=True)


@pytest.mark.parametrize(
    "build,words",
    [
        ("bert", ["'bert'", "BertForMaskedLM", "encoder (masked language model)"]),
        ("roberta", ["'roberta'", "RobertaForMaskedLM", "encoder"]),
        ("t5", ["'t5'", "T5ForConditionalGeneration", "encoder-decoder"]),
        ("bart", ["'bart'", "encoder-decoder"]),
        ("llama-classifier", ["'llama'", "LlamaForSequenceClassification", "not a language-model head"]),
    ],
)
def test_a_model_that_is_not_a_decoder_only_causal_lm_is_refused_naming_what_it_is(tmp_path, build, words):
    import transformers as tf

    if build == "bert":
        m = tf.BertForMaskedLM(
            tf.BertConfig(
                vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
            )
        )
    elif build == "roberta":
        m = tf.RobertaForMaskedLM(
            tf.RobertaConfig(
                vocab_size=99, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
            )
        )
    elif build == "t5":
        m = tf.T5ForConditionalGeneration(
            tf.T5Config(vocab_size=99, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
        )
    elif build == "bart":
        m = tf.BartForConditionalGeneration(
            tf.BartConfig(
                vocab_size=99,
                d_model=16,
                encoder_layers=1,
                decoder_layers=1,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=32,
                decoder_ffn_dim=32,
            )
        )
    else:
        m = tf.LlamaForSequenceClassification(
            tf.LlamaConfig(
                vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
            )
        )
    folder = _save(m, tmp_path / build)
    for call in (
        lambda: models.read_config(ModelSpec(source=str(folder))),
        lambda: models.load_model(ModelSpec(source=str(folder), device="cpu")),
    ):
        with pytest.raises(ModelLoadError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_tiny_causal_lm_passes_and_its_limits_are_read_without_weights(tmp_path):
    folder = _tiny_llama(tmp_path)
    config = models.read_config(ModelSpec(source=str(folder)))
    assert preflight.n_layers(config) == 3 and preflight.max_positions(config) == 256
    lm = models.load_model(ModelSpec(source=str(folder), device="cpu"))
    assert lm.n_blocks == 3
    with pytest.raises(preflight.PreflightError, match=r"--seq-len = 512 is longer than the model's 256 positions"):
        preflight.check_windows(config, 4, 512)
    from analysis.evaluation.perplexity import EvalSettings

    with pytest.raises(preflight.PreflightError, match=r"--context = 1024 .* 256 positions"):
        preflight.check_eval(config, None, EvalSettings(n_tokens=4096, context=1024, stride=256))
    with pytest.raises(preflight.PreflightError, match=r"--remove: .*block 3 out of range.*0\.\.2"):
        preflight.check_action(config, {"remove_blocks": [3]})


@pytest.mark.parametrize(
    "damage,words",
    [
        ("truncate", ["model.safetensors is damaged", "truncated"]),
        ("header", ["model.safetensors is damaged", "header"]),
    ],
)
def test_a_damaged_checkpoint_gives_one_line_naming_the_file(tmp_path, damage, words):
    folder = _tiny_llama(tmp_path)
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw[:8] + b"{not json" + raw[17:])
    with pytest.raises(ModelLoadError) as err:
        models.load_model(ModelSpec(source=str(folder), device="cpu"))
    msg = str(err.value)
    assert "\n" not in msg and str(f) in msg and all(w in msg for w in words), msg


def _remote_code_folder(tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "custom"
    folder.mkdir()
    sentinel = tmp_path / "code-ran"
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil_lm",
                "architectures": ["EvilForCausalLM"],
                "auto_map": {
                    "AutoConfig": "modeling_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                },
            }
        )
    )
    (folder / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    return folder, sentinel


def test_a_recipe_cannot_enable_remote_code(tmp_path):
    folder, sentinel = _remote_code_folder(tmp_path)
    recipe = {"layerscope": 1, "model": {"source": str(folder), "trust_remote_code": True}}
    rc.validate(recipe)
    spec = rc.spec_of(recipe)
    assert spec.trust_remote_code is False and rc.asks_for_remote_code(recipe)
    assert rc.spec_of(recipe, trust_remote_code=True).trust_remote_code  # only the caller's own flag
    with pytest.raises(ModelLoadError, match="custom code"):
        models.load_model(spec)
    assert not sentinel.exists()
    assert models.remote_code_files(spec) == [folder / "modeling_evil.py"]
    assert models.remote_code_files(ModelSpec()) is None


def test_run_with_a_recipe_asking_for_remote_code_runs_none(tmp_path):
    from tests.cli import cli

    folder, sentinel = _remote_code_folder(tmp_path)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"layerscope": 1, "model": {"source": str(folder), "trust_remote_code": True}}))
    proc = cli("run", path, "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not honoured" in proc.stderr and "custom code" in proc.stderr
    assert not sentinel.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec,words",
    [
        ("abc", ["--remove", "'abc'", "0-based"]),
        ("3-x", ["--remove", "'3-x'"]),
        ("5-2", ["--remove", "ends before it starts"]),
        ("[1,x)", ["--remove", "block list"]),
    ],
)
def test_block_lists_that_are_not_numbers_name_the_option(spec, words):
    with pytest.raises(PruneError) as err:
        parse_blocks(spec, what="--remove")
    assert all(w in str(err.value) for w in words), str(err.value)
    assert parse_blocks("12-14,3") == [3, 12, 13, 14] and parse_blocks("[2,4)") == [2, 3]


def test_windows_and_short_texts_get_sensible_messages(lm_tokenizer_text=None):
    with pytest.raises(preflight.PreflightError, match=r"--exclude-first must lie in 0\.\.127, below --seq-len = 128"):
        preflight.check_windows(None, 32, 128, exclude_first=200)
    from analysis.texts import text_from_string

    src = _converted_tokenizer()
    if src is None:
        pytest.skip("no converted tokenizer")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    five = text_from_string("one two three four five", name="five words")
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_text_windows(tok, five, 32, 128)
    msg = str(err.value)
    assert "has only 5 tokens, fewer than one window of 128" in msg and "at most 0" not in msg, msg
    from analysis.texts import TextError, calibration_windows

    with pytest.raises(TextError, match="fewer than one window of 128"):
        calibration_windows(tok, five, 32, 128)


def test_targets_by_one_projection_name_as_in_the_help(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from analysis.changes.low_rank import resolve_targets

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    names, _ = resolve_targets(model, "down_proj")
    assert names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert len(resolve_targets(model, "mlp")[0]) == 6


# --- destinations -------------------------------------------------------------------------------------------


def test_destination_rules(tmp_path):
    new = tmp_path / "new"
    assert destinations.check(new).empty
    (tmp_path / "empty").mkdir()
    assert destinations.check(tmp_path / "empty").empty
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("precious")
    with pytest.raises(destinations.DestinationError, match="not written by LayerScope.*sub/, todo.txt"):
        destinations.check(notes)
    with pytest.raises(destinations.DestinationError, match="not written by LayerScope.*never replaced"):
        destinations.check(notes, overwrite=True)
    assert (notes / "todo.txt").read_text() == "precious"
    ours = tmp_path / "ours"
    with destinations.writing(destinations.check(ours), "export") as tmp:
        (tmp / "recipe.json").write_text('{"layerscope": 1}')
    assert destinations.inspect(ours).replaceable
    with pytest.raises(destinations.DestinationError, match="--overwrite to replace it"):
        destinations.check(ours)
    assert destinations.check(ours, overwrite=True).overwrite
    (ours / "my-notes.txt").write_text("mine")
    with pytest.raises(destinations.DestinationError, match="holds files LayerScope did not write .*my-notes.txt"):
        destinations.check(ours, overwrite=True)
    legacy = tmp_path / "legacy-export"
    legacy.mkdir()
    (legacy / "recipe.json").write_text('{"layerscope": 1, "model": {}}')
    with pytest.raises(
        destinations.DestinationError, match="not written by LayerScope"
    ):  # a recipe.json proves nothing
        destinations.check(legacy, overwrite=True)
    with pytest.raises(destinations.DestinationError, match="is a file"):
        (tmp_path / "f").write_text("x")
        destinations.check(tmp_path / "f")
    with pytest.raises(destinations.DestinationError, match="never written or replaced"):
        destinations.check(Path.home(), overwrite=True)


def test_a_failed_write_leaves_no_folder_and_the_old_results_untouched(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with destinations.writing(destinations.check(out), "run") as tmp:
            (tmp / "layers.csv").write_text("half")
            raise RuntimeError("killed")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with destinations.writing(destinations.check(out), "run") as tmp:
        (tmp / "layers.csv").write_text("first run")
    with pytest.raises(RuntimeError):
        with destinations.writing(destinations.check(out, overwrite=True), "run") as tmp:
            (tmp / "layers.csv").write_text("second run, half")
            raise RuntimeError("killed")
    assert (out / "layers.csv").read_text() == "first run"


def test_report_file_destination(tmp_path):
    f = tmp_path / "report.html"
    assert not destinations.check(f, kind="file").exists
    f.write_text(destinations.with_file_marker("<html><title>LayerScope report</title></html>"))
    with pytest.raises(destinations.DestinationError, match="already exists"):
        destinations.check(f, kind="file")
    assert destinations.check(f, overwrite=True, kind="file").overwrite
    other = tmp_path / "mine.html"
    other.write_text("<html>my page</html>")
    with pytest.raises(destinations.DestinationError, match="not written by LayerScope"):
        destinations.check(other, overwrite=True, kind="file")
    with pytest.raises(destinations.DestinationError, match="is a folder"):
        destinations.check(tmp_path, kind="file")


def test_a_damaged_converted_copy_is_detected_by_its_checksums_or_structure(tmp_path):
    from analysis import cache

    folder = _tiny_llama(tmp_path, "converted")
    files = {f.name: cache.file_checksum(f) for f in sorted(folder.iterdir()) if f.is_file()}
    (folder / models.SOURCE_FILE).write_text(json.dumps({"gguf": "x.gguf", "files": files}))
    assert models.converted_damage(folder) is None
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte inside a weight: the header and the length are still right
    weights.write_bytes(bytes(raw))
    cache._VERIFIED.clear()
    assert "model.safetensors does not match its checksum" in models.converted_damage(folder)
    (folder / models.SOURCE_FILE).write_text(json.dumps({"gguf": "x.gguf"}))  # converted before checksums
    assert models.converted_damage(folder) is None  # structure intact: accepted
    weights.write_bytes(bytes(raw[:-10]))
    assert "truncated" in models.converted_damage(folder)

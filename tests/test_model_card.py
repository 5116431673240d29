"""Each bundled model's card (moe/models/<name>/README.md) states training.json's and config.json's numbers
exactly, so it cannot drift from the model it describes."""
import json
import pathlib
import re

import pytest

from moe.hf.load import BUNDLED_MODELS

KEYS = ("held_out_bytes", "bits_per_byte", "unigram_bits", "reduction")
TAGS = {"mixtral": "[moe, mixtral]", "deepseek_v3": "[moe, deepseek_v3]"}


def _front_matter(card: str) -> dict[str, str]:
    head = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert head, "the card starts with YAML front matter between two --- lines"
    return dict(line.split(": ", 1) for line in head.group(1).splitlines())


def _facts(report: dict, config: dict) -> list[str]:
    """Sentences the card must hold (compared with runs of whitespace as one space)."""
    cfg = report["config"]
    n = cfg["seq_len"]
    facts = [f"{cfg['layers']} decoder layers", f"hidden size {cfg['hidden']}", f"expert width {cfg['d_expert']}",
             f"`max_position_embeddings` {config['max_position_embeddings']}", f"{report['train_topics']} topics train",
             f"{cfg['steps']} steps", f"batch {cfg['batch']} sequences of {cfg['curriculum'][0]} bytes",
             f"lengths {', '.join(map(str, cfg['curriculum']))}", f"seed {cfg['seed']}",
             f"sliding {n}-token windows (stride {n // 2})", f"--arch {cfg['arch']}"]
    if cfg["arch"] == "mixtral":
        return facts + [f"{cfg['experts']} experts and top-{cfg['top_k']}",
                        f"aux-loss coefficient {cfg['aux_coef']}"]
    return facts + [f"{cfg['experts']} routed experts in {cfg['n_group']} groups", f"top-{cfg['top_k']}",
                    f"the best {cfg['topk_group']} groups", f"{cfg['shared_experts']} shared expert",
                    f"u = {cfg['bias_rate']}", "no aux loss"]


def card_mismatches(card: str, report: dict, config: dict) -> list[str]:
    """What the card says that training.json or config.json does not (empty: the card is true to the files)."""
    wrong = []
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", card, re.M))
    wrong += [f"{key}: card {rows.get(key)} vs {report[key]!r}" for key in KEYS if rows.get(key) != repr(report[key])]
    nmi = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", card, re.M)
    expected = [(str(i), repr(a), repr(b)) for i, (a, b) in enumerate(zip(report["nmi_trained"], report["nmi_init"]))]
    if nmi != expected:
        wrong.append(f"NMI rows {nmi} vs {expected}")
    loads = re.findall(r"^\| (\d+) \| ([\d.]+) \|$", card, re.M)
    if loads != [(str(i), repr(x)) for i, x in enumerate(report["load_max_over_mean"])]:
        wrong.append(f"load rows {loads}")
    at = re.findall(r"^\| (\d+) bytes \| ([\d.]+) \|$", card, re.M)
    if at != [(n, repr(x)) for n, x in report["bits_per_byte_at"].items()]:
        wrong.append(f"bits per byte by window rows {at}")
    text = " ".join(card.split())
    if ", ".join(report["held_out_topics"]) not in text:
        wrong.append("the held-out topics")
    wrong += [f"missing {fact!r}" for fact in _facts(report, config) if fact not in text]
    return wrong


@pytest.fixture(scope="module", params=list(BUNDLED_MODELS))
def files(request):
    model = pathlib.Path(BUNDLED_MODELS[request.param])
    return ((model / "README.md").read_text(), json.loads((model / "training.json").read_text()),
            json.loads((model / "config.json").read_text()))


def test_the_card_states_training_json_and_config_json_exactly(files):
    card, report, config = files
    assert card_mismatches(card, report, config) == []
    head = _front_matter(card)
    assert head["library_name"] == "transformers" and head["tags"] == TAGS[config["model_type"]] and head["license"]


def test_the_declared_context_is_the_trained_one_and_within_5_percent_of_the_best(files):
    _, report, config = files
    at = report["bits_per_byte_at"]
    assert config["max_position_embeddings"] == report["config"]["seq_len"] == int(max(at, key=int))
    assert at[str(report["config"]["seq_len"])] == report["bits_per_byte"] <= 1.05 * min(at.values())


def test_a_drifted_card_is_caught(files):
    card, report, config = files
    assert card_mismatches(card.replace(repr(report["bits_per_byte"]), "1.39"), report, config)[0] == (
        f"bits_per_byte: card 1.39 vs {report['bits_per_byte']!r}")
    newer = {**report, "held_out_bytes": report["held_out_bytes"] + 1}
    assert card_mismatches(card, newer, config)[0].startswith("held_out_bytes: card")
    assert card_mismatches(card, report, {**config, "max_position_embeddings": 2048}) == [
        "missing '`max_position_embeddings` 2048'"]
    shifted = {**report, "nmi_init": report["nmi_init"][::-1]}
    assert card_mismatches(card, shifted, config)[0].startswith("NMI rows")
    other = {**report, "config": {**report["config"], "steps": report["config"]["steps"] + 1}}
    assert card_mismatches(card, other, config) == [f"missing '{other['config']['steps']} steps'"]

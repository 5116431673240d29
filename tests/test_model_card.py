"""The bundled model's card (moe/models/pydoc-mixtral/README.md) states training.json's and config.json's
numbers exactly, so it cannot drift from the model it describes."""
import json
import pathlib
import re

import pytest

MODEL = pathlib.Path(__file__).resolve().parents[1] / "moe" / "models" / "pydoc-mixtral"
KEYS = ("held_out_bytes", "bits_per_byte", "unigram_bits", "reduction")


def _front_matter(card: str) -> dict[str, str]:
    head = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert head, "the card starts with YAML front matter between two --- lines"
    return dict(line.split(": ", 1) for line in head.group(1).splitlines())


def card_mismatches(card: str, report: dict, config: dict) -> list[str]:
    """What the card says that training.json or config.json does not (empty: the card is true to the files)."""
    wrong = []
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", card, re.M))
    wrong += [f"{key}: card {rows.get(key)} vs {report[key]!r}" for key in KEYS if rows.get(key) != repr(report[key])]
    nmi = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", card, re.M)
    expected = [(str(i), repr(a), repr(b)) for i, (a, b) in enumerate(zip(report["nmi_trained"], report["nmi_init"]))]
    if nmi != expected:
        wrong.append(f"NMI rows {nmi} vs {expected}")
    if ", ".join(report["held_out_topics"]) not in " ".join(card.split()):
        wrong.append("the held-out topics")
    cfg = report["config"]
    facts = [f"{cfg['layers']} decoder layers", f"{cfg['experts']} experts and top-{cfg['top_k']}",
             f"hidden size {cfg['hidden']}", f"Trained on {cfg['seq_len']}-token",
             f"`max_position_embeddings` {config['max_position_embeddings']}", f"{report['train_topics']} topics train",
             f"{cfg['steps']} steps, batch {cfg['batch']}", f"seed {cfg['seed']}",
             f"sliding\n{cfg['seq_len']}-token windows (stride {cfg['seq_len'] // 2})"]
    wrong += [f"missing {fact!r}" for fact in facts if fact not in card]
    return wrong


@pytest.fixture(scope="module")
def files():
    return ((MODEL / "README.md").read_text(), json.loads((MODEL / "training.json").read_text()),
            json.loads((MODEL / "config.json").read_text()))


def test_the_card_states_training_json_and_config_json_exactly(files):
    card, report, config = files
    assert card_mismatches(card, report, config) == []
    head = _front_matter(card)
    assert head["library_name"] == "transformers" and head["tags"] == "[moe, mixtral]" and head["license"]


def test_a_drifted_card_is_caught(files):
    card, report, config = files
    assert card_mismatches(card.replace(repr(report["bits_per_byte"]), "1.39"), report, config) == [
        f"bits_per_byte: card 1.39 vs {report['bits_per_byte']!r}"]
    newer = {**report, "held_out_bytes": report["held_out_bytes"] + 1}
    assert card_mismatches(card, newer, config)[0].startswith("held_out_bytes: card")
    assert card_mismatches(card, report, {**config, "max_position_embeddings": 2048}) == [
        "missing '`max_position_embeddings` 2048'"]
    shifted = {**report, "nmi_init": report["nmi_init"][::-1]}
    assert card_mismatches(card, shifted, config)[0].startswith("NMI rows")

"""Reads a rankforge model card the way the Hub's Python client does, for tests/model_card.rs.

    model_card_check.py DIR KIND [BASE]

KIND: causal (AutoModelForCausalLM), cls (AutoModelForSequenceClassification), mlm
(AutoModelForMaskedLM), peft-causal / peft-cls / peft-mlm (a PEFT adapter on BASE).
Prints one JSON line: the card's metadata (`card.data.to_dict()`), its eval results
(`card.data.eval_results`, from model-index), the images the text embeds (each existing one
parsed as XML: its root tag and its <polyline>/<path> count), and the class the directory
loads as (README.md must not disturb transformers or PEFT). KIND `none` skips the loading.
"""

import json
import os
import re
import sys
import xml.etree.ElementTree as ET

from huggingface_hub import ModelCard


def load(path, kind, base):
    import transformers

    auto = {"causal": "AutoModelForCausalLM", "cls": "AutoModelForSequenceClassification", "mlm": "AutoModelForMaskedLM"}
    if kind.startswith("peft-"):
        from peft import PeftConfig, PeftModel

        cls = getattr(transformers, auto[kind[5:]])
        num_labels = {}
        if kind == "peft-cls":
            num_labels = {"num_labels": json.load(open(f"{path}/adapter_config.json")).get("num_labels") or 3}
        cfg = PeftConfig.from_pretrained(path)
        model = PeftModel.from_pretrained(cls.from_pretrained(base, **num_labels), path)
        return f"{type(model).__name__}:{cfg.peft_type.value}"
    model = getattr(transformers, auto[kind]).from_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(path)
    return type(model).__name__


def svg_shapes(path):
    """The root tag and the number of line shapes (<polyline>, <path>) of an SVG file."""
    root = ET.parse(path).getroot()
    shapes = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("polyline", "path")]
    return {"root": root.tag.rsplit("}", 1)[-1], "shapes": len(shapes)}


def main():
    path, kind = sys.argv[1], sys.argv[2]
    base = sys.argv[3] if len(sys.argv) > 3 else None
    card = ModelCard.load(f"{path}/README.md")
    results = [
        {
            "task_type": r.task_type,
            "task_name": r.task_name,
            "dataset_type": r.dataset_type,
            "dataset_name": r.dataset_name,
            "dataset_split": r.dataset_split,
            "type": r.metric_type,
            "name": r.metric_name,
            "value": r.metric_value,
        }
        for r in (card.data.eval_results or [])
    ]
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    out = {
        "data": card.data.to_dict(),
        "model_name": card.data.model_name,
        "eval_results": results,
        "images": images,
        "svg": {name: svg_shapes(os.path.join(path, name)) for name in images if os.path.exists(os.path.join(path, name))},
        "text": card.text,
        "loaded": load(path, kind, base) if kind != "none" else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

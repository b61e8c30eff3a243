"""README.md model cards for the folders the pipeline writes, built from the reports those folders carry.

    write_model_card("outputs/zh_sft_merged")          # after `sft export`; training writes final/README.md itself

A folder carries what made it: ``merge_report.json`` (the vocabulary), ``resize_report.json`` (the
embeddings), ``train_report.json`` (the run: settings, metrics, ``data`` — stage, manifests and their
sources' licenses — and ``lineage``, the runs and merges before it) and ``export_report.json`` (a
LoRA merge), ``chat_vector_report.json`` (a chat vector added, with the target's lineage). The card turns them into the Hugging Face Hub's front matter (library, languages,
license inherited from the base model's own card, tags) and a readable account: how the model was
made, on which data under which licenses (data for non-commercial or research use is called out),
the last evaluation, and how to load it. Nothing is invented: a fact no report holds is left out.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CARD = "README.md"
_RESTRICTED = re.compile(r"\bNC\b|non[- ]?commercial|research (use )?only|研究", re.IGNORECASE)
_HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")
STAGES = {"pretrain": "continued pretraining", "sft": "instruction tuning (SFT)", "dpo": "preference tuning (DPO)",
          "kto": "preference tuning (KTO)", "grpo": "reinforcement learning with verifiable rewards (GRPO)",
          "distill": "knowledge distillation"}


def _json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def run_summary(report: dict[str, Any]) -> dict[str, Any]:
    """One step of a lineage: what a train_report.json says about its run."""
    settings = report.get("settings") or {}
    return {"kind": "train", "base_model": report.get("base_model"), "mode": report.get("mode"),
            "steps": report.get("step"), "global_batch": report.get("global_batch"),
            "lr": settings.get("optim.lr"), "rope_scaling": settings.get("model.rope_scaling") or None,
            "data": report.get("data")}


def lineage_of(model_path: str | Path) -> list[dict[str, Any]]:
    """The runs and merges that made the model at ``model_path``, oldest first (empty for an outside model)."""
    folder = Path(model_path)
    report = _json(folder / "train_report.json")
    steps = list(report.get("lineage") or []) + [run_summary(report)] if report else []
    export = _json(folder / "export_report.json")
    if export and export.get("kind") == "lora-merge":
        steps.append({"kind": "merge", "base_model": export.get("base"), "adapter": export.get("adapter")})
    vector = _json(folder / "chat_vector_report.json")
    if vector and vector.get("kind") == "chat vector":  # the target's own lineage, then the vector added to it
        steps = list(vector.get("lineage") or []) + [{
            "kind": "chat_vector", "base_model": vector["base"]["path"], "target": vector["target"]["path"],
            "chat": vector["chat"]["path"], "ratio": vector.get("ratio"), "embeddings": vector.get("embeddings")}]
    return steps


def _front_matter_of(card: Path) -> dict[str, Any]:
    import yaml

    try:
        text = card.read_text(encoding="utf-8")
    except OSError:
        return {}
    match = re.match(r"---\s*\n(.*?)\n---", text, re.DOTALL)
    try:
        value = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


def _origin(steps: list[dict], folder: Path) -> str | None:
    """The model the whole lineage started from (a path), when known."""
    bases = [s.get("base_model") for s in steps if s.get("base_model")]
    if bases:
        return str(bases[0])
    adapter = _json(folder / "adapter_config.json")
    return adapter.get("base_model_name_or_path") if adapter else None


def _sources(steps: list[dict]) -> list[dict[str, Any]]:
    """Every data source of every run, once per stage."""
    out: list[dict[str, Any]] = []
    for step in steps:
        data = step.get("data") or {}
        for manifest in data.get("manifests") or []:
            for source in manifest.get("sources") or []:
                out.append({**source, "stage": STAGES.get(data.get("stage"), data.get("stage") or "?"),
                            "manifest": manifest.get("name")})
        for file in data.get("files") or []:
            out.append({"name": file.get("path"), "license": None, "language": None, "weight": file.get("weight"),
                        "stage": STAGES.get(data.get("stage"), "?"), "manifest": None})
    unique = {(s["stage"], s.get("name"), s.get("license"), s.get("weight")): s for s in out}
    return list(unique.values())


def front_matter(folder: Path, steps: list[dict], sources: list[dict]) -> dict[str, Any]:
    origin = _origin(steps, folder)
    base_card = _front_matter_of(Path(origin) / CARD) if origin else {}
    languages = sorted({("zh" if str(s.get("language") or "").lower().startswith("zh") else
                         str(s.get("language")).split("-")[0].lower()) for s in sources if s.get("language")} | {"zh"})
    stages = {(s.get("data") or {}).get("stage") for s in steps} - {None}
    tags = ["zhllama", "chinese", "llama"] + sorted(stages) + (["lora"] if any(s.get("mode") == "lora" for s in steps) else [])
    tags += ["chat-vector"] if any(s.get("kind") == "chat_vector" for s in steps) else []
    out: dict[str, Any] = {"library_name": "peft" if (folder / "adapter_config.json").is_file() else "transformers",
                           "pipeline_tag": "text-generation", "language": languages, "tags": tags}
    if base_card.get("license"):
        out["license"] = base_card["license"]
        for key in ("license_name", "license_link"):
            if base_card.get(key):
                out[key] = base_card[key]
    hub = _HUB_CACHE.search(str(origin or ""))
    if hub:
        out["base_model"] = f"{hub.group(1)}/{hub.group(2)}"
    return out


def _how_made(folder: Path, steps: list[dict]) -> list[str]:
    lines = []
    merge, resize = _json(folder / "merge_report.json"), _json(folder / "resize_report.json")
    if merge:
        lines.append(f"Vocabulary: {merge.get('added', '?'):,} Chinese pieces added to the base's "
                     f"{merge.get('base_vocab_size', '?'):,} ({merge.get('vocab_size', '?'):,} tokens); every base "
                     "token keeps its id and non-Chinese text tokenizes as before (`merge_report.json`).")
    if resize:
        lines.append(f"Embeddings: resized to {resize.get('new_vocab_size', '?'):,} rows, new rows initialised by "
                     f"`{resize.get('init', '?')}` (`resize_report.json`).")
    for step in steps:
        if step.get("kind") == "merge":
            lines.append(f"LoRA adapter `{step.get('adapter')}` merged into `{step.get('base_model')}`.")
            continue
        if step.get("kind") == "chat_vector":
            lines.append(f"Chat vector: `{step.get('target')}` + {step.get('ratio')} × (`{step.get('chat')}` − "
                         f"`{step.get('base_model')}`), embeddings: {step.get('embeddings')}; the chat template is "
                         "the chat model's (`chat_vector_report.json`).")
            continue
        data = step.get("data") or {}
        what = STAGES.get(data.get("stage"), "training")
        text = f"{what[0].upper() + what[1:]}: mode `{step.get('mode')}`, {step.get('steps')} steps"
        unit = {"dpo": "pairs", "kto": "examples", "grpo": "prompts"}.get(data.get("stage"), "sequences")
        text += f" of {step['global_batch']} {unit}" if step.get("global_batch") else ""
        text += f" × {data['answers_per_prompt']} answers" if data.get("answers_per_prompt") else ""
        if (data.get("steps_per_answers") or 1) > 1:  # GRPO's iterations: a batch of answers trains several steps
            text += f" (each batch of answers trained on for {data['steps_per_answers']} steps)"
        if data.get("teacher"):  # distillation: whose distributions the model learned
            text += f" from the teacher `{data['teacher']}` ({data.get('divergence')})"
        text += f", peak learning rate {step['lr']:g}" if isinstance(step.get("lr"), (int, float)) else ""
        text += f", RoPE scaling {step['rope_scaling']}" if step.get("rope_scaling") else ""
        text += f", from `{step.get('base_model')}`"
        names = [m.get("name") for m in data.get("manifests") or []] + [f.get("path") for f in data.get("files") or []]
        lines.append(text + (f"; data: {', '.join(f'`{n}`' for n in names)}." if names else "."))
    return [f"{i}. {line}" for i, line in enumerate(lines, 1)]


def _data_section(sources: list[dict], license_text: str | None) -> list[str]:
    lines = ["## Data and licenses", ""]
    lines.append(f"Base model licence: {license_text}." if license_text
                 else "Base model licence: see the base model's card (its licence applies to this model).")
    if not sources:
        return lines + ["", "No data sources were recorded (a run made before zhllama recorded them)."]
    lines += ["", "| stage | source | language | licence | weight |", "|---|---|---|---|---|"]
    for s in sources:
        lines.append(f"| {s['stage']} | {s.get('name')} | {s.get('language') or '?'} | "
                     f"{s.get('license') or 'not recorded'} | {s.get('weight', '')} |")
    restricted = [s.get("name") for s in sources if _RESTRICTED.search(str(s.get("license") or ""))]
    if restricted:
        lines += ["", f"**Non-commercial or research-only data**: {', '.join(map(str, restricted))}. Its terms "
                  "may restrict how this model can be used."]
    return lines


def _evaluation(report: dict | None) -> list[str]:
    metrics = {k: v for k, v in ((report or {}).get("metrics") or {}).items()
               if k.startswith(("eval/", "bench/")) and isinstance(v, (int, float))}
    if not metrics:
        return []
    rows = [f"| `{k}` | {v:.4g} |" for k, v in sorted(metrics.items())]
    return ["## Evaluation at the end of training", "", "| metric | value |", "|---|---|", *rows, ""]


def _usage(folder: Path, name: str) -> list[str]:
    if (folder / "adapter_config.json").is_file():
        return ["## Use", "", "This folder is a LoRA adapter (with trained embeddings). Merge it into its base first:",
                "", "```bash", f"python -m sft export --base BASE_MODEL --adapter {folder.parent} --out MERGED", "```"]
    config = _json(folder / "tokenizer_config.json") or {}
    chat = bool(config.get("chat_template")) or (folder / "chat_template.jinja").is_file()
    call = ('ids = tok.apply_chat_template([{"role": "user", "content": "你好，请介绍一下你自己。"}], '
            'add_generation_prompt=True, return_tensors="pt")' if chat else
            'ids = tok("中国的首都是", return_tensors="pt").input_ids')
    return ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'tok = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}", dtype="auto")', call,
            "print(tok.decode(model.generate(ids, max_new_tokens=128)[0]))", "```", "",
            "GGUF for llama.cpp / Ollama: `python -m sft export ... --gguf q8_0`; an OpenAI-compatible server: "
            "`python -m sft serve --model DIR`."]


def card_text(folder: str | Path, name: str | None = None) -> str:
    """The card of ``folder``; ``name`` is its title and load path (default: the folder's name, a run's for final/)."""
    import yaml

    folder = Path(folder)
    name = name or (folder.parent.name if folder.name == "final" else folder.name)
    report = _json(folder / "train_report.json")
    steps = lineage_of(folder)  # this folder's own run (and merge) last
    sources = _sources(steps)
    meta = front_matter(folder, steps, sources)
    license_text = meta.get("license_name") or meta.get("license")
    lines = ["---", yaml.safe_dump(meta, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {name}", "",
             "A LLaMA-family model taught Chinese with zhllama. "
             "This card is written from the reports in this folder.", "", "## How it was made", ""]
    lines += _how_made(folder, steps) or ["No training or vocabulary reports are in this folder."]
    lines += ["", *_data_section(sources, license_text), "", *_evaluation(report), *_usage(folder, name), ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, name: str | None = None) -> Path:
    """Write (or rewrite) ``folder/README.md`` from the folder's reports; returns its path. ``name``: the
    folder's final name when it is written under a temporary one."""
    from .files import write_text_atomic

    path = Path(folder) / CARD
    write_text_atomic(path, card_text(folder, name))
    return path

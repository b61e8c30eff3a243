"""Helpers (no tests): a tiny exported-looking model folder and an in-process server."""
from __future__ import annotations

import threading
from pathlib import Path


def tiny_export(folder: Path) -> Path:
    """A random tiny LLaMA with our tokenizer folder, sft_template.json and its chat template."""
    from helpers_sft import our_tokenizer_folder, tiny_model

    from sft.chat_templates import install_chat_template
    from sft.templates import TemplateSpec
    from zhllama.tokenizer_files import copy_tokenizer_files

    tok = our_tokenizer_folder(folder.with_name(folder.name + "_tok"))
    tiny_model(folder, tok, hidden=32)
    copy_tokenizer_files(tok, folder)  # make_tiny_model re-saved it; keep ours
    spec = TemplateSpec("chinese-alpaca-2")
    spec.save(folder)
    install_chat_template(folder, spec)
    return folder


def start_server(model_dir: Path, **engine_options):
    """(server, base_url, engine) with the server running in a background thread on a free port."""
    from sft.generate import load_model
    from sft.serve import Engine, make_server

    model, tokenizer, spec = load_model(model_dir)
    engine = Engine(model, tokenizer, spec, "tiny-zh", **engine_options)
    server = make_server(engine, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}", engine

"""Corpus manifests, shared by every phase: schema, readers, cleaning, the held-out slice, weights.

    from corpora.manifest import load_manifest, iter_documents, iter_weighted
    python -m corpora check corpora_manifests/shared_zh_vocab.yaml
"""

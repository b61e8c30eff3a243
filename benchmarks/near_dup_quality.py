"""Near-duplicate detection: what `python -m corpora near-dups` finds, and how fast, beside datasketch.

    python benchmarks/near_dup_quality.py [--copies 100] [--manifest corpora_manifests/shared_zh_pretrain.yaml]

Takes the manifest's Chinese paragraphs (CMRC 2018 and DRCD contexts in ../shared/data), plants copies of
some of them with characters replaced at several rates (and copies cut short by a tenth), and runs both
tools over originals then copies, in order. A copy's true similarity is the exact Jaccard similarity of
its character 5-gram set with its original's; the table gives, per band of true similarity, the share of
copies each tool flags (wanted: all at >= 0.8, few below), the originals flagged (wanted: none) and the
speed. datasketch 2.0.0 (MinHash + MinHashLSH, threshold 0.8, 128 permutations, the same 5-grams) is the
peer: the library most dedup pipelines use; it is installed pinned into the cache when missing.
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpora.manifest import iter_documents, load_manifest  # noqa: E402
from corpora.near_dup import NearDupSettings, find_near_duplicates, ngram_jaccard  # noqa: E402

PEER = ("datasketch==2.0.0", "scipy==1.16.3")
BANDS = ((0.9, 1.01), (0.8, 0.9), (0.7, 0.8), (0.5, 0.7), (0.0, 0.5))
RATES = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15)


def plant(originals: list[str], copies_per_kind: int, seed: int) -> list[tuple[int, str]]:
    """(index of the original, copy) for each edit rate, and copies cut short by a tenth."""
    rng = random.Random(seed)
    out = []
    for rate in RATES:
        for i in rng.sample(range(len(originals)), copies_per_kind):
            chars = list(originals[i])
            for j in rng.sample(range(len(chars)), max(1, int(len(chars) * rate))):
                chars[j] = chr(0x4E00 + rng.randrange(20000))
            out.append((i, "".join(chars)))
    for i in rng.sample(range(len(originals)), copies_per_kind):
        out.append((i, originals[i][: int(len(originals[i]) * 0.9)]))
    return out


def ours(texts: list[str]) -> tuple[set[int], float]:
    start = time.perf_counter()
    flagged = {m.index for m in find_near_duplicates(texts, NearDupSettings())}
    return flagged, time.perf_counter() - start


def peer(texts: list[str]) -> tuple[set[int], float]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh, flagged = MinHashLSH(threshold=0.8, num_perm=128), set()
    for i, text in enumerate(texts):
        compact = "".join(text.split())
        m = MinHash(num_perm=128)
        m.update_batch([compact[j:j + 5].encode("utf-8") for j in range(max(1, len(compact) - 4))])
        if lsh.query(m):
            flagged.add(i)
        else:
            lsh.insert(i, m)
    return flagged, time.perf_counter() - start


def ensure_peer(cache: Path) -> bool:
    try:
        import datasketch  # noqa: F401
        return True
    except ImportError:
        pass
    target = cache / "datasketch-2.0.0"
    if not (target / "datasketch").is_dir():
        print(f"installing {' '.join(PEER)} into {target} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                               *PEER], capture_output=True, text=True)
        if proc.returncode:
            print(f"peer not available (pip: {proc.stderr.strip()[-300:]})")
            return False
    sys.path.insert(0, str(target))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default=str(REPO / "corpora_manifests" / "shared_zh_pretrain.yaml"))
    parser.add_argument("--copies", type=int, default=100, help="copies per edit rate")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "zhllama" / "pinned"))
    args = parser.parse_args()
    manifest = load_manifest(args.manifest)
    originals = [d.text for s in manifest.sources for d in iter_documents(s, split="all") if len(d.text) >= 100]
    planted = plant(originals, args.copies, seed=0)
    texts = originals + [copy for _, copy in planted]
    truth = [ngram_jaccard(originals[i], copy) for i, copy in planted]
    print(f"{len(originals)} originals ({sum(map(len, originals)) / len(originals):.0f} characters on average), "
          f"{len(planted)} planted copies")
    rows = [("zhllama (corpora/near_dup.py)", *ours(texts))]
    if ensure_peer(Path(args.cache)):
        rows.append(("datasketch 2.0.0 MinHashLSH", *peer(texts)))
    header = ["tool", "docs/s"] + [f"J {lo:.1f}-{min(hi, 1):.1f}" for lo, hi in BANDS] + ["originals flagged"]
    print(" | ".join(header))
    for name, flagged, seconds in rows:
        cells = [name, f"{len(texts) / seconds:,.0f}"]
        for lo, hi in BANDS:
            members = [k for k, j in enumerate(truth) if lo <= j < hi]
            hit = sum(len(originals) + k in flagged for k in members)
            cells.append(f"{hit}/{len(members)}")
        cells.append(str(sum(i in flagged for i in range(len(originals)))))
        print(" | ".join(cells))


if __name__ == "__main__":
    main()

"""Hash of the demo's default stage-2 stream and tokenizer corpus, to check that a code change left the demo's
training data as it was (notes/demo.md, round 5).

    python notes/scripts/stream_signature.py [SEED] [ROWS]      # defaults: seed 2, 3,000 rows

Run it at two commits (e.g. in a `git worktree`) and compare the two lines it prints: the text of every message part
of the first ROWS stream rows (media parts by type; their pixels and samples follow from the same specs), and the
tokenizer corpus.
"""

import hashlib
import itertools
import json
import sys

from mmmmodal.demo import DemoSettings
from mmmmodal.demo_data import stream_dataset, task_config, tokenizer_corpus


def main(seed: int = 2, n: int = 3000):
    s = DemoSettings()
    stream = stream_dataset(seed, s.batch_size, curriculum_rows=s.curriculum_steps * s.batch_size,
                            caption_share=s.caption_share, text_share=s.text_share)
    rows = hashlib.sha1()
    for row in itertools.islice(stream, n):
        parts = [(p.get("type"), p.get("text")) for m in row["messages"] for p in m["content"]]
        rows.update(json.dumps(parts).encode())
    corpus = hashlib.sha1("\n".join(tokenizer_corpus(task_config())).encode())
    print(f"stream (seed {seed}, {n} rows): {rows.hexdigest()}")
    print(f"tokenizer corpus: {corpus.hexdigest()}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

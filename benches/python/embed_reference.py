"""The onnxruntime reference of the embed bench (benches/src/bin/embed.rs).

usage: embed_reference.py MODEL.onnx TOKENIZER.json INPUT.json MAX_TOKENS

INPUT.json holds {"texts": [...], "vectors": [[...], ...], "batch": B}: the texts and
the vectors Ringbase (tract, its own WordPiece) made of them. This embeds the same
texts with onnxruntime (one thread) and the model's own Hugging Face tokenizer, mean-
pooled over the attention mask like sentence-transformers, and prints JSON: the
cosine of each pair (min, mean), and onnxruntime's texts/s one text per call and B per
call.
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    model_path, tokenizer_path, input_path, max_tokens = sys.argv[1:5]
    data = json.load(open(input_path))
    texts, ours, batch = data["texts"], np.array(data["vectors"], dtype=np.float32), data["batch"]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tok = Tokenizer.from_file(tokenizer_path)
    # Some tokenizer.json files pad every text to a fixed length: pad per batch here,
    # as Ringbase does (the attention mask makes padding invisible to the pooling).
    tok.no_padding()
    tok.enable_truncation(int(max_tokens))

    def embed(chunk):
        enc = tok.encode_batch(chunk)
        width = max(len(e.ids) for e in enc)
        ids = np.zeros((len(chunk), width), dtype=np.int64)
        mask = np.zeros((len(chunk), width), dtype=np.int64)
        for row, e in enumerate(enc):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out = session.run(None, {n: feeds[n] for n in names})[0]
        if out.ndim == 2:
            return out
        m = mask[:, :, None].astype(np.float32)
        return (out * m).sum(axis=1) / m.sum(axis=1)

    t = time.perf_counter()
    theirs = np.concatenate([embed(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    batch_tps = len(texts) / (time.perf_counter() - t)
    t = time.perf_counter()
    single = texts[: min(len(texts), 200)]
    for text in single:
        embed([text])
    single_tps = len(single) / (time.perf_counter() - t)

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    cos = (unit(ours) * unit(theirs)).sum(axis=1)
    print(
        json.dumps(
            {
                "compared": len(texts),
                "cos_min": float(cos.min()),
                "cos_mean": float(cos.mean()),
                "single_tps": single_tps,
                "batch_tps": batch_tps,
                "onnxruntime": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The PyTorch peer of hyperrec's recommendation path, for side-by-side figures.

Reads what `hyperrec-bench` exported (`--input DIR`: the same item embeddings, user
profiles, histories, seen sets and request traffic the Rust suite ran) and runs the same
workload in eager PyTorch:

    encode (transformers BERT, mean pooling, L2 norm)
    -> fusion   normalize(alpha * query + (1 - alpha) * user), group = mean of members
    -> cache    history prior: history_weight * mean of the similarity rows of the user's
                recent history items (computed as (mean of their embeddings) @ items.T,
                which is the same number by linearity)
    -> similarity  fused @ items.T + prior, seen items masked, top-C
    -> rerank   multi-head attention of each candidate over the user's recent history and
                the request's context phrases; score = retrieval + attention term; top-k

Each stage is timed with torch.cuda.synchronize() around it (eager PyTorch, as a team
would write it first). Writes `--out FILE`: a JSON object with the fields of
hyperrec-bench's PeerResult (implementation, device, latency per stage, batches, encoding).

The model comes from a local directory (`--model DIR`: config.json, tokenizer.json,
model.safetensors), because the GPU machine has no network.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from transformers import AutoModel, PreTrainedTokenizerFast

STAGES = ["encode", "fusion", "cache", "similarity", "rerank"]


def summary(samples):
    """Same order statistics as hyperrec-bench's Summary (linear interpolation, type 7)."""
    xs = np.sort(np.asarray(samples, dtype=np.float64))
    if xs.size == 0:
        return None
    return {
        "count": int(xs.size),
        "min": float(xs[0]),
        "median": float(np.quantile(xs, 0.5)),
        "mean": float(xs.mean()),
        "p95": float(np.quantile(xs, 0.95)),
        "p99": float(np.quantile(xs, 0.99)),
        "max": float(xs[-1]),
    }


class Peer:
    def __init__(self, input_dir, model_dir, device, dtype):
        self.device = torch.device(device)
        self.dtype = dtype
        with open(os.path.join(input_dir, "config.json")) as f:
            self.config = json.load(f)
        cfg = self.config
        load = lambda name: np.load(os.path.join(input_dir, name))
        self.items = torch.from_numpy(load("items.npy")).to(self.device, dtype)
        self.users = torch.from_numpy(load("users.npy")).to(self.device, dtype)
        # Recent histories, [n_users, history_len] item rows padded with -1.
        self.history = torch.from_numpy(load("history.npy").astype(np.int64)).to(self.device)
        seen_offsets = load("seen_offsets.npy").astype(np.int64)
        seen_items = load("seen_items.npy").astype(np.int64)
        self.seen_offsets = seen_offsets
        self.seen_items = torch.from_numpy(seen_items).to(self.device)
        self.n_items, self.dim = self.items.shape

        self.tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.pad_token = "[PAD]"
        self.model = AutoModel.from_pretrained(model_dir, torch_dtype=dtype).to(self.device).eval()

        # Untrained attention heads, as hyperrec's rerank without learned weights: fixed
        # random projections (the cost is what is compared, not the values).
        g = torch.Generator(device="cpu").manual_seed(cfg.get("seed", 7))
        heads = cfg["rerank_heads"]
        self.heads = heads
        scale = 1.0 / math.sqrt(self.dim)
        proj = lambda: (torch.randn(self.dim, self.dim, generator=g) * scale).to(self.device, dtype)
        self.wq, self.wk, self.wv = proj(), proj(), proj()
        self.alpha = cfg["alpha"]
        self.candidates = cfg["candidates"]
        self.history_len = cfg["history_len"]
        self.history_weight = cfg["history_weight"]
        self.attention_weight = cfg.get("attention_weight", 0.5)
        self.phrase_cache = {}

    @torch.inference_mode()
    def encode(self, texts):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).to(self.dtype)

    def phrases(self, requests):
        """Context phrase embeddings per request, each phrase encoded once and cached (as the
        pipeline does when it builds its context vocabulary)."""
        missing = sorted({p for r in requests for p in r["context"] if p not in self.phrase_cache})
        if missing:
            for phrase, emb in zip(missing, self.encode(missing)):
                self.phrase_cache[phrase] = emb
        return [[self.phrase_cache[p] for p in r["context"]] for r in requests]

    @torch.inference_mode()
    def run(self, requests, sync_each_stage):
        """One batch through the five stages; returns per-stage microseconds and total."""
        times = {}
        n = len(requests)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t_start = time.perf_counter()
        t = t_start

        def mark(stage):
            nonlocal t
            if sync_each_stage:
                sync()
                now = time.perf_counter()
                times[stage] = (now - t) * 1e6
                t = now

        # encode
        q = self.encode([r["query"] for r in requests])
        mark("encode")

        # fusion: user side is the mean of the requester's and companions' profiles.
        rows = [[u for u in [r["user_row"]] + r["companion_rows"] if u >= 0] for r in requests]
        user_vec = torch.zeros(n, self.dim, device=self.device, dtype=self.dtype)
        for i, members in enumerate(rows):
            if members:
                user_vec[i] = self.users[torch.tensor(members, device=self.device)].float().mean(0).to(self.dtype)
        has_user = torch.tensor([bool(m) for m in rows], device=self.device).unsqueeze(1)
        fused = torch.where(has_user, self.alpha * q + (1 - self.alpha) * user_vec, q)
        fused = torch.nn.functional.normalize(fused.float(), dim=-1).to(self.dtype)
        mark("fusion")

        # cache: history prior over every item.
        user_rows = torch.tensor([max(r["user_row"], 0) for r in requests], device=self.device)
        known = torch.tensor([r["user_row"] >= 0 for r in requests], device=self.device)
        hist = self.history[user_rows][:, -self.history_len:]  # [n, H], -1 padded
        valid = (hist >= 0) & known.unsqueeze(1)
        hist_emb = self.items[hist.clamp(min=0)] * valid.unsqueeze(-1).to(self.dtype)
        hist_mean = hist_emb.sum(1) / valid.sum(1, keepdim=True).clamp(min=1).to(self.dtype)
        prior = self.history_weight * (hist_mean @ self.items.T)
        mark("cache")

        # similarity: exact scores, seen items excluded, top-C.
        scores = (fused @ self.items.T + prior).float()
        for i, r in enumerate(requests):
            u = r["user_row"]
            if u >= 0 and r.get("exclude_seen", True):
                lo, hi = self.seen_offsets[u], self.seen_offsets[u + 1]
                if hi > lo:
                    scores[i, self.seen_items[lo:hi]] = float("-inf")
        cand_scores, cand_ids = torch.topk(scores, self.candidates, dim=1)
        mark("similarity")

        # rerank: each candidate attends over history items and context phrases.
        phrase_embs = self.phrases(requests)
        max_ctx = max((len(p) for p in phrase_embs), default=0)
        sources = hist_emb
        source_mask = valid
        if max_ctx:
            ctx = torch.zeros(n, max_ctx, self.dim, device=self.device, dtype=self.dtype)
            ctx_mask = torch.zeros(n, max_ctx, dtype=torch.bool, device=self.device)
            for i, embs in enumerate(phrase_embs):
                for j, e in enumerate(embs):
                    ctx[i, j] = e
                    ctx_mask[i, j] = True
            sources = torch.cat([sources, ctx], 1)
            source_mask = torch.cat([source_mask, ctx_mask], 1)
        cand = self.items[cand_ids]  # [n, C, d]
        h, dh = self.heads, self.dim // self.heads
        Q = (cand @ self.wq).view(n, -1, h, dh).transpose(1, 2)  # [n, h, C, dh]
        K = (sources @ self.wk).view(n, -1, h, dh).transpose(1, 2)  # [n, h, S, dh]
        V = (sources @ self.wv).view(n, -1, h, dh).transpose(1, 2)
        logits = (Q @ K.transpose(-1, -2)).float() / math.sqrt(dh)
        logits = logits.masked_fill(~source_mask[:, None, None, :], float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, -1))  # rows with no source -> 0
        attended = (weights.to(self.dtype) @ V).transpose(1, 2).reshape(n, -1, self.dim)
        final = cand_scores + self.attention_weight * (attended * fused[:, None, :]).sum(-1).float()
        k = max(r["k"] for r in requests)
        top_scores, top = torch.topk(final, k, dim=1)
        result_ids = torch.gather(cand_ids, 1, top)
        mark("rerank")

        sync()
        result_ids.cpu()
        times["total"] = (time.perf_counter() - t_start) * 1e6
        return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="directory hyperrec-bench exported")
    parser.add_argument("--model", required=True, help="local model directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16 or float32 (default: float16 on cuda)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    dtype_name = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    peer = Peer(args.input, args.model, args.device, dtype)
    with open(os.path.join(args.input, "traffic.json")) as f:
        traffic = json.load(f)

    log = lambda msg: print(f"peer: {msg}", file=sys.stderr, flush=True)
    log(f"{peer.n_items} items, {peer.users.shape[0]} users, device {args.device}, {dtype_name}")
    peer.run([traffic["cold"]], True)
    for r in traffic["warmup"]:
        peer.run([r], True)
    samples = {s: [] for s in STAGES + ["total"]}
    for r in traffic["latency"]:
        for stage, us in peer.run([r], True).items():
            samples[stage].append(us)
    log(f"latency: median total {np.median(samples['total']):.0f} us")

    batches = []
    for entry in traffic["batches"]:
        size, runs = entry["size"], entry["batches"]
        if len(runs) < 2:
            continue
        peer.run(runs[0], False)
        batch_us = [peer.run(b, False)["total"] for b in runs[1:]]
        seconds = sum(batch_us) / 1e6
        batches.append({
            "size": size,
            "batches": len(batch_us),
            "seconds": seconds,
            "queries_per_second": size * len(batch_us) / seconds,
            "median_batch_us": float(np.median(batch_us)),
        })
        log(f"batch {size}: {batches[-1]['queries_per_second']:.0f} queries/s")

    encoding = None
    texts = traffic.get("encode_texts", [])
    if texts:
        sync = torch.cuda.synchronize if peer.device.type == "cuda" else (lambda: None)
        peer.encode(texts[:64])
        sync()
        started = time.perf_counter()
        for i in range(0, len(texts), 64):
            peer.encode(texts[i:i + 64])
        sync()
        seconds = time.perf_counter() - started
        encoding = {"texts": len(texts), "seconds": seconds, "texts_per_second": len(texts) / seconds}

    device_name = args.device
    if peer.device.type == "cuda":
        device_name = f"{args.device} ({torch.cuda.get_device_name(peer.device)})"
    result = {
        "implementation": f"pytorch {torch.__version__}, eager, {dtype_name}",
        "device": device_name,
        "latency": {s: summary(v) for s, v in samples.items() if v},
        "batches": batches,
        "encoding": encoding,
        "notes": [
            "per-stage latency synchronizes the device after each stage; batch figures only at the end",
            "cache stage computes the history prior as (mean history embedding) @ items.T, equal by linearity to averaging cached similarity rows",
        ],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

"""PyTorch + PEFT baseline for the train benchmark: the same model, data subset, head (mean
pooling + linear), LoRA rank and targets, batch size, max length, epochs, optimiser and schedule
as `train_bench`, printing one JSON line of examples/s, peak RSS and test macro-F1.

usage: python peft_baseline.py MODEL_DIR TRAIN TEST PER_INTENT RANK EPOCHS BATCH MAX_LEN THREADS
"""
import json, random, resource, sys, time

import torch
import transformers
import peft

model_dir, train_path, test_path = sys.argv[1:4]
per_intent, rank, epochs, batch, max_len, threads = map(int, sys.argv[4:10])
torch.set_num_threads(threads)
torch.manual_seed(42)
random.seed(42)

rows = [json.loads(l) for l in open(train_path)]
labels = sorted({r["label"] for r in rows})
data = [r for l in labels for r in [x for x in rows if x["label"] == l][:per_intent]]
random.shuffle(data)
held = len(data) // 10
train, val = data[held:], data[:held]
test = [json.loads(l) for l in open(test_path)]
tok = transformers.AutoTokenizer.from_pretrained(model_dir)


class Student(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = transformers.AutoModel.from_pretrained(model_dir, add_pooling_layer=False)
        self.classifier = torch.nn.Linear(self.bert.config.hidden_size, len(labels))

    def forward(self, input_ids=None, attention_mask=None, **_):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.classifier((hidden * mask).sum(1) / mask.sum(1))


config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1,
                         target_modules=["query", "value"], modules_to_save=["classifier"])
model = peft.get_peft_model(Student(), config)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
steps = epochs * ((len(train) + batch - 1) // batch)
sched = transformers.get_linear_schedule_with_warmup(opt, int(0.1 * steps + 0.999), steps)


def encode(rows):
    return tok([r["text"] for r in rows], padding=True, truncation=True, max_length=max_len, return_tensors="pt")


seconds, seen = 0.0, 0
for epoch in range(epochs):
    model.train()
    random.shuffle(train)
    for i in range(0, len(train), batch):
        chunk = train[i:i + batch]
        start = time.perf_counter()
        enc = encode(chunk)
        y = torch.tensor([labels.index(r["label"]) for r in chunk])
        loss = torch.nn.functional.cross_entropy(model(**enc), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step(); sched.step(); opt.zero_grad()
        seconds += time.perf_counter() - start
        seen += len(chunk)


def macro_f1(gold, pred):
    f1s = []
    for c in set(gold) | set(pred):
        tp = sum(g == p == c for g, p in zip(gold, pred))
        fp = sum(p == c and g != c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


model.eval()
pred = []
start = time.perf_counter()
with torch.no_grad():
    for i in range(0, len(test), 32):
        pred += model(**encode(test[i:i + 32])).argmax(-1).tolist()
inference = len(test) / (time.perf_counter() - start)
gold = [labels.index(r["label"]) for r in test]
print(json.dumps({
    "system": "pytorch+peft", "torch": torch.__version__, "peft": peft.__version__,
    "train_examples": len(train), "epochs": epochs, "rank": rank,
    "train_examples_per_second": seen / seconds,
    "inference_sentences_per_second": inference,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "test_macro_f1": macro_f1(gold, pred),
}))

"""Loads a prompt2lora adapter with Python's transformers + PEFT and checks that it gives the same
probabilities as `prompt2lora predict` on the same messages.

usage: python peft_check.py BASE_MODEL_DIR ADAPTER_DIR MESSAGES.txt PREDICTIONS.jsonl

PREDICTIONS.jsonl is `prompt2lora predict ADAPTER_DIR MESSAGES.txt --top-k <number of intents>`.
Exits 1, naming the message, when an intent's probability differs by more than 1e-4, or when the
adapter's LoRA matrices are all zero (an untrained adapter would prove nothing).
"""
import json
import sys

import peft
import safetensors.torch
import torch
import transformers

TOLERANCE = 1e-4


class Student(torch.nn.Module):
    """The student as prompt2lora builds it: BERT without its pooler, mean pooling over the
    attention mask, and a linear head named `classifier`."""

    def __init__(self, base, labels):
        super().__init__()
        self.bert = transformers.AutoModel.from_pretrained(base, add_pooling_layer=False)
        self.config = self.bert.config  # PEFT's sequence-classification wrapper reads it
        self.classifier = torch.nn.Linear(self.bert.config.hidden_size, labels)

    def forward(self, input_ids=None, attention_mask=None, **_):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.classifier((hidden * mask).sum(1) / mask.sum(1))


def main(base, adapter, messages_path, predictions_path):
    meta = json.load(open(f"{adapter}/labels.json"))
    labels = meta["labels"]
    weights = safetensors.torch.load_file(f"{adapter}/adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    if not lora_b or all(float(t.abs().max()) == 0.0 for t in lora_b):
        sys.exit("the adapter's lora_B matrices are all zero: train it before checking")

    model = peft.PeftModel.from_pretrained(Student(base, len(labels)), adapter)
    model.eval()
    head = model.base_model.model.classifier
    if not isinstance(head, peft.utils.other.ModulesToSaveWrapper):
        sys.exit("PEFT did not restore the classifier head from modules_to_save")

    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    messages = [line.rstrip("\n") for line in open(messages_path, encoding="utf-8")]
    messages = [m for m in messages if m.strip()]
    expected = [json.loads(line) for line in open(predictions_path, encoding="utf-8")]
    assert len(expected) == len(messages), f"{len(expected)} predictions for {len(messages)} messages"

    batch = tokenizer(messages, padding=True, truncation=True, max_length=meta["max_length"],
                      return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(model(**batch), dim=-1)

    worst = 0.0
    for i, (message, record) in enumerate(zip(messages, expected)):
        theirs = {record["intent"]: record["probability"]}
        theirs.update({a["intent"]: a["probability"] for a in record["alternatives"]})
        if len(theirs) != len(labels):
            sys.exit(f"prediction {i + 1} lists {len(theirs)} of {len(labels)} intents: "
                     "run predict with --top-k set to the number of intents")
        for j, label in enumerate(labels):
            diff = abs(float(probs[i, j]) - theirs[label])
            worst = max(worst, diff)
            if diff > TOLERANCE:
                sys.exit(f"message {i + 1} ({message!r}), intent {label}: PEFT gives "
                         f"{float(probs[i, j]):.6f}, prompt2lora {theirs[label]:.6f}")
    print(f"PEFT and prompt2lora agree on {len(messages)} messages x {len(labels)} intents; "
          f"largest probability difference {worst:.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""Use a DynaSpec assistant with the unchanged `target.generate(assistant_model=...)` call.

    python examples/quickstart.py dynaspec-demo/target dynaspec-demo/assistant

(`dynaspec-hf demo` writes such a pair; any target plus a calibrated assistant for its tokenizer works.)
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import dynaspec_hf  # registers the "dynaspec" model type with the Auto classes; `generate` is the tree loop

target_path, assistant_path = sys.argv[1:3]
tokenizer = AutoTokenizer.from_pretrained(target_path)
target = AutoModelForCausalLM.from_pretrained(target_path)
assistant = AutoModelForCausalLM.from_pretrained(assistant_path)

inputs = tokenizer("def fibonacci(n):\n", return_tensors="pt")
with torch.no_grad():
    plain = target.generate(**inputs, do_sample=False, max_new_tokens=40)
    assisted = target.generate(**inputs, assistant_model=assistant, do_sample=False, max_new_tokens=40)
    tree = dynaspec_hf.generate(target, assistant, inputs["input_ids"], max_new_tokens=40)  # DySpec token trees
print(tokenizer.decode(assisted[0]))
print("identical to the target alone:", torch.equal(plain, assisted))
print("tree decoding identical to the target alone:", torch.equal(plain, tree))

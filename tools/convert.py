#!/usr/bin/env python3
"""Convert a PyTorch GPT-2 into a pygpt model folder.

  python tools/convert.py gpt2 out/gpt2                    # Hugging Face model id (online)
  python tools/convert.py path/to/hf_folder out/m          # save_pretrained folder
  python tools/convert.py ckpt.pt out/m --tokenizer DIR    # nanoGPT checkpoint
  python tools/convert.py gpt2_124M.bin out/m --tokenizer DIR   # llm.c checkpoint
  python tools/convert.py weights.pt out/m --config config.json --tokenizer DIR
  python tools/convert.py path/to/hf_folder out/m --lora ADAPTER_DIR   # merge a PEFT LoRA adapter
"""

import sys

from pygpt.convert import main

if __name__ == "__main__":
    sys.exit(main())

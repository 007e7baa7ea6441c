#!/usr/bin/env python
"""The authors' name for evaluation/aesthetic.py (their README runs `evaluation/eval_aes_score.py calc ... --desc=...`): same options."""
import os
import runpy

if __name__ == "__main__":
    runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "aesthetic.py"), run_name="__main__")

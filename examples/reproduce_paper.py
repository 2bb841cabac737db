"""Reproduce the Whisper-GPT paper's comparison (GPT-S / GPT-L / hybrid on speech and music) plus ablations.

    python examples/reproduce_paper.py --budget-minutes 50

Same as ``whisper-gpt reproduce``; see `whisper_gpt.apps.reproduce` for what it does and writes
(``docs/results.json``, ``docs/results.md``, ``docs/figures/``).
"""

from whisper_gpt.apps.reproduce import main

if __name__ == "__main__":
    main()

"""Reproduce the Whisper-GPT paper's comparison (GPT-S / GPT-L / hybrid on speech and music) plus ablations.

    python examples/reproduce_paper.py --only headline --regimes random_kmeans   # one part of the study
    python examples/reproduce_paper.py --estimate-only --only headline --regimes random_kmeans   # its cost here

Same as ``whisper-gpt reproduce``: every run trains for ``--steps`` optimizer steps (default 400), its result is
stored under ``OUTPUT_DIR/runs/`` as it finishes, a rerun skips stored runs, and the report
(``DOCS_DIR/results.json``, ``results.md``, ``figures/``) is rendered from every stored result; see
`whisper_gpt.apps.reproduce`.
"""

from whisper_gpt.apps.reproduce import main

if __name__ == "__main__":
    main()

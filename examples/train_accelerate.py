"""Train Whisper-GPT with Accelerate on a folder of audio, a built corpus or a prepared dataset.

One process:      python examples/train_accelerate.py DATA OUTPUT_DIR --preset paper_hybrid
Two CPU workers:  accelerate launch --cpu --num_processes 2 examples/train_accelerate.py DATA OUTPUT_DIR
Custom sizes:     ... --preset custom --set hidden_size=128 --set num_hidden_layers=2 --set use_spectrogram=true
Continue a run:   ... --resume            (the latest checkpoint under OUTPUT_DIR/checkpoints)

Same options as `whisper-gpt train`; the loop lives in `whisper_gpt.training`.
"""

from whisper_gpt.training.loop import main

if __name__ == "__main__":
    main()

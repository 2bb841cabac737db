"""Train Whisper-GPT with Accelerate on a folder of audio, a built corpus or a prepared dataset.

One process:      python examples/train_accelerate.py DATA OUTPUT_DIR --preset paper_hybrid
Two CPU workers:  torchrun --standalone --nproc_per_node 2 examples/train_accelerate.py DATA OUTPUT_DIR
                  (or accelerate launch --cpu --num_processes 2 ..., or --config_file with use_cpu: true)
Several machines: accelerate launch --config_file examples/accelerate/multi_node_ddp.yaml --machine_rank R \
                      examples/train_accelerate.py DATA OUTPUT_DIR ...       (R = 0, 1, ... one per machine)
                  or torchrun --nnodes M --node_rank R --master_addr HOST0 --master_port 29500 \
                      --nproc_per_node N examples/train_accelerate.py DATA OUTPUT_DIR ...
                  (on CPUs a config file with use_cpu: true, num_machines and num_processes works the same way)
Sharded (GPUs):   accelerate launch --config_file examples/accelerate/fsdp.yaml examples/train_accelerate.py ...
Custom sizes:     ... --preset custom --set hidden_size=128 --set num_hidden_layers=2 --set use_spectrogram=true
Continue a run:   ... --resume            (the latest checkpoint under OUTPUT_DIR/checkpoints)

--batch-size is the global batch (split between all processes). --mixed-precision defaults to the launcher's
(accelerate launch --mixed_precision or its config file's mixed_precision), else no; given, it overrides the
launcher's "no" and must match any other. Same options as `whisper-gpt train`; the loop lives in
`whisper_gpt.training`.
"""

from whisper_gpt.training.loop import main

if __name__ == "__main__":
    main()

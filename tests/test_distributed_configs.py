"""The Accelerate configs under examples/accelerate/ and the torchrun route, on two CPU processes (gloo).

Multi-node DDP runs as two "machines" of one process each on this host; torchrun trains through the CLI. FSDP: on
a machine without GPUs Accelerate 1.16 never enters FSDP (its ``Accelerator`` makes every CPU run ``MULTI_CPU``,
i.e. DDP, whatever the config says), so the FSDP config is checked as far as Accelerate goes on the CPU (its config
loader and launcher turn it into FSDP2 settings wrapping every `WhisperGPTBlock`), and Accelerate's own FSDP2
sharding of the model (`fsdp2_prepare_model`, as its ``prepare`` calls it) is then trained over gloo by torch and
compared with one unsharded process.

Run as a script (``torchrun --nproc_per_node 2 tests/test_distributed_configs.py fsdp2-worker CONFIG OUTPUT``),
this file is one process of the FSDP2 check.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from audio_folder import write_audio_folder
from conftest import tiny_config
from safetensors.torch import load_file

from whisper_gpt import WhisperGPTForCausalLM, WhisperGPTProcessor
from whisper_gpt.training import TrainingConfig, train
from whisper_gpt.training.loop import _mixed_precision, _torchrun_for_accelerate_cpu

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate"
# One tiny model for every run here: 2 codebooks (so the depth decoder and its blocks are there), the mel path's
# blocks and the mel head (which reads the code embeddings a second time in each forward).
MODEL = {"num_codebooks": 2, "use_mel_head": True}
TINY_KEYS = set(tiny_config().__init__.__code__.co_varnames)


def _free_port() -> str:
    with socket.socket() as probe:  # a free port, so concurrent test runs do not collide
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _launcher_environment(config_file: Path, *launch_args: str) -> tuple[Any, dict[str, str]]:
    """What ``accelerate launch --config_file CONFIG LAUNCH_ARGS`` would pass a multi-process run: the parsed
    launch arguments and the environment its launcher gives the processes (Accelerate's own code paths)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parsed = launch_command_parser().parse_args(["--config_file", str(config_file), *launch_args, "script.py"])
    parsed, _, _ = _validate_launch_command(parsed)
    return parsed, prepare_multi_gpu_env(parsed)


def _fsdp2_worker(config_file: Path, output: Path) -> None:
    """One process of the FSDP2 check (see the module docstring); rank 0 writes OUTPUT/result.json, the unsharded
    reference's weights (reference.safetensors) and the training loop's final folder of the gathered weights
    (final/, with the processor saved in OUTPUT/processor); every rank writes its shard of OUTPUT/checkpoint."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, save_fsdp_model
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from safetensors.torch import save_file
    from torch.distributed.fsdp import FSDPModule

    from whisper_gpt.modeling_whisper_gpt import WhisperGPTBlock
    from whisper_gpt.training.loop import _model_to_save, build_optimizer, save_final

    _, environment = _launcher_environment(config_file, "--num_processes", "2")
    os.environ.update({key: value for key, value in environment.items() if key.startswith(("FSDP_", "ACCELERATE_"))})
    torch.set_num_threads(1)
    state = PartialState(cpu=True)  # the gloo group, as Accelerator(cpu=True) forms it (and the one it keeps)
    rank, world = state.process_index, state.num_processes
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings, as Accelerator does
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        device=torch.device("cpu"),
        is_main_process=rank == 0,
        process_index=rank,
        num_processes=world,
        mixed_precision="no",
        torch_device_mesh=None,
    )
    torch.manual_seed(0)
    config = tiny_config(**MODEL)
    reference = WhisperGPTForCausalLM(config)
    model = WhisperGPTForCausalLM(config)
    model.load_state_dict(reference.state_dict())
    model = fsdp2_prepare_model(accelerator, model)
    blocks = [module for module in model.modules() if isinstance(module, WhisperGPTBlock)]
    optimizer = build_optimizer(model, 1e-2)
    reference_optimizer = build_optimizer(reference, 1e-2)

    generator = torch.Generator().manual_seed(1)
    sharded_losses, reference_losses = [], []
    for _ in range(3):
        # A global batch of 4 rows split 2 + 2: each rank's mean loss has as many targets as the other's, so the
        # mean of the ranks' gradients (FSDP's reduce-scatter) is the gradient of the whole batch's mean loss.
        codes = torch.randint(0, config.codebook_size, (4, config.num_codebooks, 24), generator=generator)
        features = torch.randn(4, 24, config.num_mel_bins, generator=generator)
        mine = slice(2 * rank, 2 * rank + 2)
        loss = model(input_ids=codes[mine], input_features=features[mine], labels=codes[mine], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        dist.all_reduce(global_loss := loss.detach().clone())
        sharded_losses.append(float(global_loss) / world)
        loss = reference(input_ids=codes, input_features=features, labels=codes, use_cache=False).loss
        loss.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad()
        reference_losses.append(float(loss))

    local = {name: tensor.to_local().numel() for name, tensor in model.state_dict().items()}
    save_fsdp_model(plugin, accelerator, model, str(output / "checkpoint"))
    # The training loop's final save, with Accelerate's own unwrap_model and get_state_dict as they run under FSDP2.
    accelerator.distributed_type, accelerator.is_fsdp2 = DistributedType.FSDP, True
    accelerator.unwrap_model = functools.partial(Accelerator.unwrap_model, accelerator)
    accelerator.get_state_dict = functools.partial(Accelerator.get_state_dict, accelerator)
    trained = _model_to_save(accelerator, model)
    if rank == 0:
        settings = TrainingConfig(output_dir=str(output), train_data="gloo", preset="custom", batch_size=4)
        save_final(trained, WhisperGPTProcessor.from_pretrained(output / "processor"), output / "final", settings, None)
        save_file(
            {name: tensor.contiguous() for name, tensor in reference.state_dict().items()},
            output / "reference.safetensors",
        )
        result = {
            "sharded_losses": sharded_losses,
            "reference_losses": reference_losses,
            "blocks": len(blocks),
            "blocks_sharded": sum(isinstance(block, FSDPModule) for block in blocks),
            "local_numel": sum(local.values()),
            "numel": sum(tensor.numel() for tensor in reference.state_dict().values()),
            "unwrapped_class": type(accelerator.unwrap_model(model)).__name__,
        }
        (output / "result.json").write_text(json.dumps(result))
    state.wait_for_everyone()
    state.destroy_process_group()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_processor) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    write_audio_folder(root / "audio")
    tiny_processor.save_pretrained(root / "processor")
    return root


def _settings(setup: Path) -> dict[str, Any]:
    """The run every launch here trains: 3 steps of a global batch of 4, a checkpoint at step 2, validation."""
    overrides = {key: value for key, value in tiny_config(**MODEL).to_diff_dict().items() if key in TINY_KEYS}
    return {
        "train_data": str(setup / "audio"),
        "processor": str(setup / "processor"),
        "preset": "custom",
        "model_overrides": overrides,
        "max_frames": 48,
        "batch_size": 4,
        "max_steps": 3,
        "warmup_steps": 1,
        "eval_every": 0,
        "eval_batch_size": 4,
        "eval_window": 64,
        "save_every": 2,
        "log_every": 1,
        "cache_dir": str(setup / "cache"),
        "report_to": "none",
    }


def _command_line(setup: Path, output: Path) -> list[str]:
    """TRAIN_DATA OUTPUT_DIR and the options of `_settings` for ``whisper-gpt train`` / the example script."""
    settings = _settings(setup)
    arguments = [settings.pop("train_data"), str(output), "--no-progress"]
    for key, value in settings.pop("model_overrides").items():
        arguments.append(f"--set={key}={json.dumps(value)}")
    for key, value in settings.items():
        arguments += ["--" + key.replace("_", "-"), str(value)]
    return arguments


@pytest.fixture(scope="module")
def one_process(setup) -> dict[str, Any]:
    """The same run in this process: what two processes splitting each batch must reproduce."""
    return train(TrainingConfig(output_dir=str(setup / "one"), progress=False, torch_threads=1, **_settings(setup)))


def _assert_matches_one_process(output: Path, one_process: dict[str, Any]) -> None:
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 3
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    losses = [record["train/loss"] for record in logged if "train/loss" in record]
    # Each process gets half of every global batch: the same losses up to float summation order.
    assert losses == pytest.approx([record["train/loss"] for record in one_process["history"]], abs=1e-4)
    assert summary["validation"]["nll"] == pytest.approx(one_process["validation"]["nll"], abs=2e-3)
    assert summary["validation"]["tokens"] == one_process["validation"]["tokens"]
    for rank in (0, 1):  # the checkpoint holds both processes' random states
        assert (output / "checkpoints" / "step-00000002" / f"random_states_{rank}.pkl").is_file()
    assert WhisperGPTForCausalLM.from_pretrained(output / "final").config.num_codebooks == MODEL["num_codebooks"]


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _run_together(commands: list[list[str]], environments: list[dict[str, str]], logs: Path) -> None:
    """Run processes that form one group and check that each succeeded. Their output goes to files under ``logs``
    (a full pipe would stall a process its peers wait for); when one fails, the others, left waiting for it, are
    killed with their children (each runs in its own session)."""
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        for index, (command, environment) in enumerate(zip(commands, environments, strict=True)):
            with (logs / f"{index}.log").open("w") as log:
                processes.append(
                    subprocess.Popen(
                        command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
                    )
                )
        deadline = time.monotonic() + 300
        running = processes
        while running and time.monotonic() < deadline and not any(process.returncode for process in processes):
            time.sleep(0.2)
            running = [process for process in running if process.poll() is None]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for index, process in enumerate(processes):
        assert process.returncode == 0, (
            f"process {index} exited with {process.returncode}: " + (logs / f"{index}.log").read_text()[-4000:]
        )


def test_multi_node_ddp_config_trains_two_machines_of_one_process(setup, one_process):
    config = CONFIGS / "multi_node_ddp.yaml"
    output = setup / "multi-node"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2"]
    machine = ["--main_process_ip", "127.0.0.1", "--main_process_port", _free_port()]
    script = [str(ROOT / "examples" / "train_accelerate.py"), *_command_line(setup, output)]
    commands = [[*launch, "--machine_rank", str(rank), *machine, *script] for rank in (0, 1)]
    _run_together(commands, [{**os.environ, "OMP_NUM_THREADS": "1"}] * 2, setup / "logs-multi-node")
    _assert_matches_one_process(output, one_process)


def _cpu_config(path: Path, **values: Any) -> Path:
    """An Accelerate config file for CPU processes (what ``accelerate config`` writes for them), with ``values``."""
    settings = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_CPU", "use_cpu": True}
    path.write_text(yaml.safe_dump({**settings, "mixed_precision": "no", "debug": False, **values}))
    return path


def test_accelerate_cpu_launches_become_torchrun_with_their_layout(tmp_path):
    environment = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29511"}
    meeting = ["--master_addr=10.0.0.1", "--master_port=29511"]
    missing = str(tmp_path / "no-default.yaml")

    def torchrun(*launch: str, default: str = missing, launcher: tuple[str, ...] = ("accelerate", "launch")):
        command = _torchrun_for_accelerate_cpu([sys.executable, *launcher, *launch], environment, default)
        if command is not None:
            assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
            return command[3:]
        return None

    # The count from the command line (the script's own arguments are passed on untouched).
    assert torchrun("--cpu", "--num_processes", "4", "train.py", "--num_processes", "9") == [
        *("--nnodes=1", "--node_rank=0", "--nproc_per_node=4", *meeting, "train.py", "--num_processes", "9")
    ]
    # The count and the machines from --config_file, the rank from the command line; a module stays a module.
    two = _cpu_config(tmp_path / "two.yaml", num_processes=4, num_machines=2, machine_rank=0)
    launch = ("--config_file", str(two), "--machine_rank", "1", "-m", "whisper_gpt.apps.cli", "train")
    assert torchrun(*launch) == [
        *("--nnodes=2", "--node_rank=1", "--nproc_per_node=2", *meeting, "-m", "whisper_gpt.apps.cli", "train")
    ]
    # The command line wins over the file; Accelerate's default config file is read unless --cpu is given.
    assert torchrun("--config_file", str(two), "--num_processes", "2", "--num_machines", "1", "t.py")[:3] == [
        *("--nnodes=1", "--node_rank=0", "--nproc_per_node=2")
    ]
    assert torchrun("t.py", default=str(two))[:3] == ["--nnodes=2", "--node_rank=0", "--nproc_per_node=2"]
    assert torchrun("--cpu", "t.py", default=str(two)) is None
    for launcher in (("-m", "accelerate.commands.launch"), ("/venv/bin/accelerate-launch",)):
        assert torchrun("--cpu", "--num_processes", "2", "t.py", launcher=launcher)[2] == "--nproc_per_node=2"
    # One process on one machine, or a parent that is not Accelerate's launcher: nothing to start.
    assert torchrun("--cpu", "t.py") is None
    assert torchrun("--num_processes", "2", "t.py", launcher=("other", "launch")) is None
    with pytest.raises(ValueError, match="multiple of num_machines"):
        torchrun("--cpu", "--num_processes", "3", "--num_machines", "2", "--machine_rank", "0", "t.py")
    with pytest.raises(ValueError, match="between 0 and num_machines - 1"):
        torchrun("--cpu", "--num_processes", "2", "--num_machines", "2", "--machine_rank", "2", "t.py")


def test_accelerate_cpu_config_file_trains_two_machines_of_one_process(setup, one_process, tmp_path):
    # The process count and the machines come from the file only; each launcher starts one CPU process, which
    # restarts itself as its machine's torchrun process.
    meeting = {"main_process_ip": "127.0.0.1", "main_process_port": int(_free_port())}
    config = _cpu_config(tmp_path / "cpu.yaml", num_processes=2, num_machines=2, machine_rank=0, **meeting)
    output = setup / "accelerate-cpu"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    script = ["-m", "whisper_gpt.apps.cli", "train", *_command_line(setup, output)]
    commands = [[*launch, "--machine_rank", str(rank), *script] for rank in (0, 1)]
    _run_together(commands, [{**os.environ, "OMP_NUM_THREADS": "1"}] * 2, setup / "logs-accelerate-cpu")
    _assert_matches_one_process(output, one_process)


def test_torchrun_trains_through_the_cli_with_two_cpu_processes(setup, one_process):
    output = setup / "torchrun"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*run, "-m", "whisper_gpt.apps.cli", "train", *_command_line(setup, output)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    _check(subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment))
    _assert_matches_one_process(output, one_process)


def test_configs_parse_into_the_launch_they_describe(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    multi_node = load_config_from_file(str(CONFIGS / "multi_node_ddp.yaml"))
    assert multi_node.distributed_type == DistributedType.MULTI_GPU and multi_node.num_machines == 2
    args, _ = _launcher_environment(
        CONFIGS / "multi_node_ddp.yaml", "--machine_rank", "1", "--main_process_ip", "127.0.0.1"
    )
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, str(multi_node.num_processes // 2))
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("static", f"127.0.0.1:{multi_node.main_process_port}")

    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2
    _, environment = _launcher_environment(CONFIGS / "fsdp.yaml", "--num_processes", "2")
    assert environment["ACCELERATE_USE_FSDP"] == "true" and environment["FSDP_VERSION"] == "2"
    assert environment["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    # The shard unit is the layer class the decoder, the mel path and the depth decoder all use (named in the file,
    # so what FSDP wraps does not follow what `_no_split_modules` keeps whole for device maps).
    assert environment["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "WhisperGPTBlock"
    assert "WhisperGPTBlock" in WhisperGPTForCausalLM._no_split_modules
    # A file's mixed_precision reaches the processes, where it is the run's precision unless --mixed-precision is
    # given (which may override "no", the files' value, and must match any other).
    assert {multi_node.mixed_precision, fsdp.mixed_precision} == {"no"}
    settings = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump({**settings, "mixed_precision": "bf16"}))
    _, environment = _launcher_environment(tmp_path / "bf16.yaml", "--num_processes", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", environment["ACCELERATE_MIXED_PRECISION"])
    assert _mixed_precision(None) == "bf16"


def test_fsdp2_sharding_of_the_config_trains_like_one_process_and_saves(tmp_path, tiny_processor):
    tiny_processor.save_pretrained(tmp_path / "processor")
    # The two workers are started directly, with the variables torchrun would set (a launcher process costs time).
    common = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": _free_port()}
    common.update({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
    command = [sys.executable, str(Path(__file__)), "fsdp2-worker", str(CONFIGS / "fsdp.yaml"), str(tmp_path)]
    environments = [{**common, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in (0, 1)]
    _run_together([command, command], environments, tmp_path / "logs")
    result = json.loads((tmp_path / "result.json").read_text())
    config = tiny_config(**MODEL)
    # Every block is its own shard unit: the decoder's, the mel path's and the depth decoder's.
    layers = config.num_hidden_layers + config.spectrogram_layers + config.depth_num_layers
    assert result["blocks"] == result["blocks_sharded"] == layers
    assert result["local_numel"] < 0.6 * result["numel"]  # each of the 2 processes holds about half the weights
    # Sharded over two processes, the model trains as one process on the whole batch.
    assert result["sharded_losses"] == pytest.approx(result["reference_losses"], rel=1e-5)
    shards = sorted(path.name for path in (tmp_path / "checkpoint").rglob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]
    # The final folder holds the package's model class and remote code, not torch's FSDP subclass and sources.
    assert result["unwrapped_class"] == "FSDPWhisperGPTForCausalLM"
    final = tmp_path / "final"
    assert not list(final.glob("_fsdp*")) and (final / "README.md").is_file()
    saved_config = json.loads((final / "config.json").read_text())
    assert saved_config["architectures"] == ["WhisperGPTForCausalLM"]
    assert saved_config["auto_map"]["AutoModelForCausalLM"] == "modeling_whisper_gpt.WhisperGPTForCausalLM"
    saved = WhisperGPTForCausalLM.from_pretrained(final).state_dict()
    reference = load_file(tmp_path / "reference.safetensors")
    assert saved.keys() == reference.keys()
    assert all(torch.allclose(saved[name], reference[name], atol=1e-5) for name in saved)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "fsdp2-worker":
        raise SystemExit(f"usage: torchrun --nproc_per_node 2 {sys.argv[0]} fsdp2-worker CONFIG OUTPUT")
    _fsdp2_worker(Path(sys.argv[2]), Path(sys.argv[3]))

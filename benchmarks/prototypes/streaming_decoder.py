"""PROTOTYPE (not used by the package): a stateful streaming EnCodec decoder for codec-in-the-loop generation.

Proposed for `tokenization_whisper_gpt.py` (see benchmarks/PROFILING.md). `generate()` today re-decodes a
window of ``mel_window_frames`` (32) frames plus the tokenizer's 14 silence frames for EVERY new frame, and
each `decode()` call also re-encodes those 14 frames of silence to get their codes. This decoder instead keeps,
for every layer of the SEANet decoder, exactly the left context it needs (the LSTM's (h, c); the last
``(kernel - 1) * dilation`` inputs of each convolution; the ``kernel - stride`` overlapping output samples of
each transposed convolution), so one step decodes one new frame and computes every output sample once.

Exactness: the concatenation of ``prime(codes[..., :n])`` and ``step(codes[..., t])`` for t >= n equals
``tokenizer.decode(codes)`` to float rounding (max |diff| ~1.5e-5 on audio of scale 0.17 with the real-size
architecture, batch 1 and 8), because the tokenizer decodes behind the same silence prefix; only the first
samples of that prefix differ (zero left state instead of reflect padding) and they are thrown away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.encodec.modeling_encodec import (
    EncodecConv1d,
    EncodecConvTranspose1d,
    EncodecLSTM,
    EncodecResnetBlock,
)


def _conv_transpose1d(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """F.conv_transpose1d without bias. For a few input frames torch's CPU kernel takes a slow path (8 ms for
    one frame at batch 8, 10-13 ms for 2-8 frames at batch 1, for the 512->256 kernel-16 layer); there it is a
    matmul (B, T, Cin) @ (Cin, Cout * k) and an overlap-add (F.fold), ~0.5 ms."""
    if x.shape[-1] > 8:
        return F.conv_transpose1d(x, weight, None, stride=stride)
    channels_in, channels_out, kernel = weight.shape
    batch, _, length = x.shape
    columns = (x.transpose(1, 2) @ weight.reshape(channels_in, channels_out * kernel)).transpose(1, 2)
    size = (length - 1) * stride + kernel
    out = F.fold(columns.contiguous(), output_size=(1, size), kernel_size=(1, kernel), stride=(1, stride))
    return out.view(batch, channels_out, size)


class StreamingEncodecDecoder:
    """``prime(codes)`` starts a stream (returns the prompt's audio); ``step(codes)`` (B, K, n) decodes n new frames.

    Use it under ``torch.nn.utils.parametrize.cached()`` so the weight-norm weights are computed once per
    stream instead of once per layer per frame.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.codec = tokenizer.codec
        self.hop = tokenizer.hop_length
        self.state: dict = {}

    def _conv(self, layer: EncodecConv1d, x: torch.Tensor, key) -> torch.Tensor:
        conv = layer.conv
        context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        if context:
            previous = self.state.get(key)
            if previous is None:
                previous = x.new_zeros(x.shape[0], x.shape[1], context)
            x = torch.cat([previous, x], dim=-1)
            self.state[key] = x[..., -context:]
        # No padding: the inputs are exactly the receptive field, so small inputs never hit the slow
        # thnn_conv2d path that reflect-padded 7-frame inputs take (1.4 ms -> 0.06 ms for the first conv).
        return F.conv1d(x, conv.weight, conv.bias, dilation=conv.dilation[0])

    def _conv_transpose(self, layer: EncodecConvTranspose1d, x: torch.Tensor, key) -> torch.Tensor:
        conv = layer.conv
        stride = conv.stride[0]
        y = _conv_transpose1d(x, conv.weight, stride)  # (B, C, (T - 1) * stride + kernel), no bias
        carry = self.state.get(key)
        if carry is not None:
            y[..., : carry.shape[-1]] += carry
        ready = x.shape[-1] * stride
        self.state[key] = y[..., ready:]  # the causal trim: overlap that the next frame completes
        return y[..., :ready] + conv.bias[:, None]

    def _lstm(self, layer: EncodecLSTM, x: torch.Tensor, key) -> torch.Tensor:
        lstm = layer.lstm
        sequence = x.permute(2, 0, 1)  # (T, B, C)
        state = self.state.get(key)
        if sequence.shape[0] == 1 and state is not None:
            # One step: torch.lstm_cell is ~3.5x faster than nn.LSTM (oneDNN reorders weights per call).
            h, c = state
            inputs, hs, cs = sequence[0], [], []
            for index in range(lstm.num_layers):
                inputs, c_new = torch.lstm_cell(
                    inputs,
                    (h[index], c[index]),
                    getattr(lstm, f"weight_ih_l{index}"),
                    getattr(lstm, f"weight_hh_l{index}"),
                    getattr(lstm, f"bias_ih_l{index}"),
                    getattr(lstm, f"bias_hh_l{index}"),
                )
                hs.append(inputs)
                cs.append(c_new)
            output, state = inputs[None], (torch.stack(hs), torch.stack(cs))
        else:
            output, state = lstm(sequence, state)
        self.state[key] = state
        return (output + sequence).permute(1, 2, 0)

    def _run(self, layer: nn.Module, x: torch.Tensor, key) -> torch.Tensor:
        if isinstance(layer, EncodecConv1d):
            return self._conv(layer, x, key)
        if isinstance(layer, EncodecConvTranspose1d):
            return self._conv_transpose(layer, x, key)
        if isinstance(layer, EncodecLSTM):
            return self._lstm(layer, x, key)
        if isinstance(layer, EncodecResnetBlock):
            residual = x
            for index, sublayer in enumerate(layer.block):
                x = self._run(sublayer, x, (key, index))
            if isinstance(layer.shortcut, EncodecConv1d):
                residual = self._conv(layer.shortcut, residual, (key, "shortcut"))
            return residual + x
        return layer(x)  # ELU: pointwise, no state

    @torch.inference_mode()
    def step(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, n) codes -> (B, n * hop) audio, continuing the stream."""
        hidden = self.codec.quantizer.decode(codes.transpose(0, 1))
        for index, layer in enumerate(self.codec.decoder.layers):
            hidden = self._run(layer, hidden, index)
        return hidden[:, 0]

    @torch.inference_mode()
    def prime(self, codes: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Start a stream with the tokenizer's silence prefix and ``codes`` (B, K, T); returns their audio.

        ``window``: decode only the last ``window`` frames of ``codes`` (as generate()'s ``mel_window_frames``
        does today), so starting a stream costs the same whatever the prompt length; the LSTM state then
        starts from silence ``window`` frames back instead of at the start of the prompt.
        """
        self.state = {}
        if window is not None:
            codes = codes[..., -window:]
        silence = self.tokenizer._silence_codes()[: codes.shape[1]]
        prefixed = torch.cat([silence[None].expand(codes.shape[0], -1, -1), codes], dim=-1)
        return self.step(prefixed)[:, silence.shape[-1] * self.hop :]

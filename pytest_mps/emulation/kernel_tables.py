"""Hand-kept facts about PyTorch's MPS backend that ``native_functions.yaml`` cannot say, with their
sources: the dispatch keys registered for every backend, the kernels ``MPSFallback.mm`` registers to
always run on the CPU, and the CPU-only helper ops a CPU trace records where MPS calls another op.
:mod:`pytest_mps.emulation.op_coverage` combines them with the yaml."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["COMPOSITE_DISPATCH_KEYS", "CPU_ONLY_HELPER_OPS", "CPU_ONLY_PREFIXES", "MPS_CPU_FALLBACK_OPS"]


# Dispatch keys whose kernel is registered for every backend, MPS included. The *NestedTensor variant of
# CompositeImplicitAutograd is deliberately absent: it only serves nested tensors, not dense MPS tensors.
COMPOSITE_DISPATCH_KEYS: frozenset[str] = frozenset(
    {"CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional", "CompositeImplicitAutograd"}
)

# Kernels that PyTorch registers for the MPS key outside native_functions.yaml, in the
# ``TORCH_LIBRARY_IMPL(aten, MPS, m)`` block of aten/src/ATen/mps/MPSFallback.mm: each is wired to
# ``mps_fallback`` (copy to CPU, run the CPU kernel, copy back) whatever PYTORCH_ENABLE_MPS_FALLBACK says.
# Source: pytorch/pytorch aten/src/ATen/mps/MPSFallback.mm as of commit 035290b77d8b (consistent with torch
# 2.13's yaml; the earlier revision at 33ce58194cc4 also listed im2col and bitwise_{left,right}_shift
# .Tensor_out, which have since gained MPS kernels). A table entry whose yaml entry has a native MPS
# kernel resolves to NATIVE, which keeps the table safe across versions: around torch 1.12-1.13 the file
# also listed ``_fft_c2c``, ``_fft_r2c``, ``repeat_interleave.*``, ``linalg_vector_norm``, ``nonzero``,
# ``masked_select``, ``topk.values``..., all native in the yaml of recent torch.
# ``_slow_conv2d_forward`` is also registered there, but with a kernel that only raises a device-mismatch
# error (MPS convolutions never reach it), so it is treated as a CPU-only helper below instead.
MPS_CPU_FALLBACK_OPS: frozenset[str] = frozenset(
    {
        "embedding_renorm_",  # nn.Embedding(max_norm=...)
        "linalg_svd",  # yaml: CompositeImplicit, but the MPS registration wins for MPS tensors
        "linalg_svd.U",
        "col2im",  # nn.Fold; also has an MPS kernel in recent yaml (then NATIVE)
        "upsample_nearest3d.vec",  # yaml: CompositeImplicit; MPS registration sends it to the CPU
    }
)

# Ops that a CPU run records (a TorchDispatchMode sees them) but that an MPS run never calls, because the
# op above them chooses a backend-specific implementation. Each maps to the op MPS calls instead, and takes
# that op's status, so a CPU trace of code that runs fine on MPS raises no false alarm. Sources: the yaml
# (``*_for_cpu`` / ``*_for_mps`` pairs), aten/src/ATen/native/transformers/attention.cpp (SDPA backend
# choice: on MPS the math path, ``_scaled_dot_product_attention_math_for_mps`` when it applies, otherwise
# the CompositeImplicit ``_scaled_dot_product_attention_math``), aten/src/ATen/native/RNN.cpp (LSTM:
# mkldnn on CPU, ``_lstm_mps`` on MPS), aten/src/ATen/native/Convolution.cpp (``_convolution`` picks
# ``_mps_convolution*`` on MPS), and torch/nn/modules/{activation,transformer}.py (the fused
# ``_native_multi_head_attention`` / ``_transformer_encoder_layer_fwd`` fast paths are only taken for
# devices in ``_supported_device_type = ["cpu", "cuda", <privateuse1>]``; on MPS the Python path runs,
# built on linear + scaled_dot_product_attention).
CPU_ONLY_HELPER_OPS: Mapping[str, str] = MappingProxyType(
    {
        # scaled_dot_product_attention
        "_scaled_dot_product_flash_attention_for_cpu": "_scaled_dot_product_attention_math_for_mps",
        "_scaled_dot_product_flash_attention_for_cpu_backward": "_scaled_dot_product_attention_math",
        # nn.MultiheadAttention / nn.TransformerEncoderLayer fast paths
        "_native_multi_head_attention": "scaled_dot_product_attention",
        "_transformer_encoder_layer_fwd": "scaled_dot_product_attention",
        "_masked_softmax": "_softmax",
        "_masked_softmax_backward": "_softmax_backward_data",
        # LSTM: mkldnn on CPU, a dedicated MPS kernel on Macs
        "mkldnn_rnn_layer": "_lstm_mps",
        "mkldnn_rnn_layer_backward": "lstm_mps_backward",
        # convolution kernels chosen below aten::_convolution (only visible in decomposed traces)
        "_slow_conv2d_forward": "_mps_convolution",  # MPSFallback.mm: an error-only kernel, see above
        "_slow_conv2d_backward.output_mask": "mps_convolution_backward",
        "slow_conv3d_forward": "_mps_convolution",
        "slow_conv_dilated2d": "_mps_convolution",
        "slow_conv_dilated3d": "_mps_convolution",
        "_nnpack_spatial_convolution": "_mps_convolution",
        "slow_conv_transpose2d": "_mps_convolution_transpose",
        "slow_conv_transpose3d": "_mps_convolution_transpose",
        # int4 weight-only quantization (torchao and friends pick the op by device)
        "_weight_int4pack_mm_for_cpu": "_weight_int4pack_mm",
        "_convert_weight_to_int4pack_for_cpu": "_convert_weight_to_int4pack",
    }
)

# mkldnn ops need an mkldnn-layout tensor or are picked by a CPU-only code path; neither happens to a Mac's
# MPS tensors, so a CPU trace that shows one says nothing about MPS. Those not mapped to a counterpart
# above are reported COMPOSITE (the MPS path runs other, covered ops). ``to_mkldnn`` itself is left alone:
# user code that calls ``tensor.to_mkldnn()`` really fails on an MPS tensor, and that is the one alarm.
CPU_ONLY_PREFIXES: tuple[str, ...] = ("mkldnn_", "_mkldnn_")

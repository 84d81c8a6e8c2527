"""Model-level ops that run faster than the official code's on the CPU or in ONNX Runtime and must
give the same values: the stem's max pooling, the in-place ResNet activations, the exported
channel softmax."""
from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from vosrt.models.common import channel_softmax
from vosrt.models.cutie.resnet import ResNetTrunk, _MaxPool


def test_stem_max_pooling_gives_exactly_the_nchw_values():
    x = torch.randn(2, 8, 33, 47)
    assert torch.equal(_MaxPool(3, stride=2, padding=1)(x), F.max_pool2d(x, 3, stride=2, padding=1))


def _out_of_place_trunk(trunk: ResNetTrunk, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The trunk as the official code writes it: out-of-place ReLUs and sums, NCHW pooling."""
    def block(b, x):
        out = torch.relu(b.bn1(b.conv1(x)))
        if hasattr(b, "conv3"):
            out = torch.relu(b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
        else:
            out = b.bn2(b.conv2(out))
        return torch.relu(out + b.downsample(x))

    x = F.max_pool2d(torch.relu(trunk.bn1(trunk.conv1(x))), 3, stride=2, padding=1)
    features = []
    for stage in (getattr(trunk, trunk.first_stage_name), trunk.layer2, trunk.layer3):
        for b in stage:
            x = block(b, x)
        features.append(x)
    return tuple(reversed(features))


@torch.inference_mode()
def test_in_place_trunks_give_exactly_the_official_values():
    torch.manual_seed(0)
    for arch in ("resnet18", "resnet50"):
        trunk = ResNetTrunk(arch).eval()
        for module in trunk.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 3, 64, 96)
        for got, expected in zip(trunk(x), _out_of_place_trunk(trunk, x)):
            assert torch.equal(got, expected)


class _Softmax(torch.nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return channel_softmax(logits)


def test_channel_softmax_exports_without_softmax_or_transposes():
    logits = torch.randn(1, 3, 20, 30) * 8
    logits[0, :, 0, 0] = torch.tensor([50.0, -50.0, 50.0])  # a saturated pixel
    buffer = io.BytesIO()
    torch.onnx.export(_Softmax(), (logits,), buffer, input_names=["logits"], opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert not {"Softmax", "Transpose"} & {node.op_type for node in graph.node}
    got = ort.InferenceSession(buffer.getvalue()).run(None, {"logits": logits.numpy()})[0]
    np.testing.assert_allclose(got, torch.softmax(logits, dim=1).numpy(), rtol=0, atol=1e-6)
    assert torch.equal(channel_softmax(logits), torch.softmax(logits, dim=1))  # eager: torch's own

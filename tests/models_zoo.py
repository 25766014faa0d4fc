"""Small multi-exit models for the profile tests, with costs that can be worked out by hand.

fvcore's conventions (MACs per sample, input batch 1):
conv = C_out * H_out * W_out * C_in/groups * kh * kw (bias not counted); linear = in * out;
adaptive_avg_pool2d = input elements; batch_norm (eval, affine) = 2 * elements;
matmul (A @ B) = elements of A * columns of B; ReLU, flatten, add, expand: 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pool_head(c_in: int, n_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_classes))


class LinearStack(nn.Module):
    """MLP on (B, 8) with a head after every layer.

    MACs: layers 8*16, 16*16, 16*16 = 128, 256, 256; heads 16*3 = 48 each.
    Stages: 128+48 = 176, 256+48 = 304, 256+48 = 304; exits 176, 480, 784.
    """

    EXIT_MACS = (176, 480, 784)

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.h1, self.h2, self.h3 = nn.Linear(16, 3), nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = F.relu(self.l1(x))
        b = F.relu(self.l2(a))
        c = F.relu(self.l3(b))
        return [self.h1(a), self.h2(b), self.h3(c)]


class ConvStack(nn.Module):
    """Conv stack on (B, 3, 8, 8) with pooled-linear heads after each conv.

    c1 3->4 3x3 pad 1, 8x8:      4*64*3*9  = 6912;  head1: pool 4*64 = 256, linear 4*5 = 20
    c2 4->8 3x3 s2 pad 1, 4x4:   8*16*4*9  = 4608;  head2: pool 8*16 = 128, linear 8*5 = 40
    c3 8->8 3x3 pad 1, 4x4:      8*16*8*9  = 9216;  head3: pool 128, linear 40
    Stages 7188, 4776, 9384; exits 7188, 11964, 21348.
    """

    EXIT_MACS = (7188, 11964, 21348)

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.h1, self.h2, self.h3 = _pool_head(4, 5), _pool_head(8, 5), _pool_head(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        c = F.relu(self.c3(b))
        return self.h1(a), self.h2(b), self.h3(c)


class BranchyNet(nn.Module):
    """Heads that branch from several depths, one with its own conv, one reading two depths.

    Input (B, 2, 8, 8).
    c1 2->4 3x3 pad 1, 8x8:   4*64*2*9 = 4608
    c2 4->4 3x3 pad 1, 8x8:   4*64*4*9 = 9216
    c3 4->8 1x1, 8x8:         8*64*4   = 2048
    exit 1 (from c2, own conv 4->4 1x1 = 4*64*4 = 1024; pool 256; linear 4*6 = 24)
        stage 1 = c1 + c2 + head1 = 4608 + 9216 + 1024 + 256 + 24 = 15128
    exit 2 (from c1 and c3: pool(c1) 256 + pool(c3) 512, linear (4+8)*6 = 72)
        stage 2 = c3 + head2 = 2048 + 256 + 512 + 72 = 2888
    exit 3 (from c3 through c4 8->8 3x3 s2 pad 1, 4x4: 8*16*8*9 = 9216; pool 128; linear 48)
        stage 3 = 9216 + 128 + 48 = 9392
    Exits 15128, 18016, 27408.
    """

    EXIT_MACS = (15128, 18016, 27408)

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(4, 8, 1, bias=False)
        self.c4 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.h1_conv = nn.Conv2d(4, 4, 1, bias=False)
        self.h1 = _pool_head(4, 6)
        self.h2 = nn.Linear(12, 6)
        self.h3 = _pool_head(8, 6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a))
        c = F.relu(self.c3(b))
        e1 = self.h1(F.relu(self.h1_conv(b)))
        pooled = torch.cat([F.adaptive_avg_pool2d(a, 1).flatten(1), F.adaptive_avg_pool2d(c, 1).flatten(1)], 1)
        e2 = self.h2(pooled)
        e3 = self.h3(F.relu(self.c4(c)))
        return [e1, e2, e3]


class _CrossAttention(nn.Module):
    """Single-head cross-attention: queries from ``q_in``, keys/values from ``kv_in``."""

    def __init__(self, d_q: int, d_kv: int, d: int, d_out: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d_q, d), nn.Linear(d_kv, d), nn.Linear(d_kv, d)
        self.o = nn.Linear(d, d_out)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(q_in), self.k(kv_in), self.v(kv_in)
        attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * self.scale, dim=-1)
        return self.o(torch.matmul(attn, v))


class PerceiverLike(nn.Module):
    """A Dynamic-Perceiver-style two-branch model on (B, 3, 8, 8).

    A CNN feature branch (three blocks) and a latent-token branch (``L`` learned tokens)
    exchange information after every block: cross-attention x->z (latents read the
    features) and z->x (features read the latents). Exits 1-3 read the latent branch after
    blocks 1-3 (``y_early``, ``y_att``); exit 4 merges a CNN head on the last features with
    the latent head (``y_merge = y_cnn + y_att``), so the last block's z->x attention and
    the CNN head belong to stage 4 only.
    """

    def __init__(self, n_latents: int = 4, d: int = 16, n_classes: int = 7) -> None:
        super().__init__()
        chans = (8, 16, 16)
        self.latents = nn.Parameter(torch.randn(n_latents, d) * 0.5)
        self.blocks = nn.ModuleList()
        self.x2z = nn.ModuleList()
        self.z2x = nn.ModuleList()
        self.z_mlp = nn.ModuleList()
        c_in = 3
        for i, c in enumerate(chans):
            stride = 2 if i == 1 else 1
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                )
            )
            self.x2z.append(_CrossAttention(d, c, d, d))
            self.z2x.append(_CrossAttention(c, d, d, c))
            self.z_mlp.append(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU()))
            c_in = c
        self.latent_heads = nn.ModuleList([nn.Linear(d, n_classes) for _ in chans])
        self.cnn_head = _pool_head(chans[-1], n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        z = self.latents.unsqueeze(0).expand(b, -1, -1)
        f = x
        outs = []
        for i, block in enumerate(self.blocks):
            f = block(f)
            n, c, h, w = f.shape
            tokens = f.flatten(2).transpose(1, 2)  # (B, HW, C)
            z = z + self.x2z[i](z, tokens)
            z = z + self.z_mlp[i](z)
            tokens = tokens + self.z2x[i](tokens, z)
            f = tokens.transpose(1, 2).reshape(n, c, h, w)
            outs.append(self.latent_heads[i](z.mean(1)))
        y_cnn = self.cnn_head(f)
        return [outs[0], outs[1], outs[2], y_cnn + outs[2]]


class AttentionExits(nn.Module):
    """Two exits over ``nn.MultiheadAttention`` blocks on (B, 5, 16) token sequences.

    In eval mode under no_grad, eager PyTorch runs MHA as one fused kernel
    (``aten::_native_multi_head_attention``), while the exported graph shows its projections
    and ``scaled_dot_product_attention``: dyncal's attention rules count both to one total.
    """

    def __init__(self) -> None:
        super().__init__()
        self.att1 = nn.MultiheadAttention(16, 2, batch_first=True)
        self.att2 = nn.MultiheadAttention(16, 2, batch_first=True)
        self.h1, self.h2 = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = x + self.att1(x, x, x, need_weights=False)[0]
        b = a + self.att2(a, a, a, need_weights=False)[0]
        return [self.h1(a.mean(1)), self.h2(b.mean(1))]


class SequenceFirst(nn.Module):
    """Carries (L, B, D) tensors between exits: the batch is dimension 1, not 0."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 16), nn.Linear(16, 16)
        self.h1, self.h2 = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = torch.relu(self.l1(x.transpose(0, 1)))  # (L, B, D)
        u = torch.relu(self.l2(t))
        return [self.h1(t.mean(0)), self.h2(u.mean(0))]


class ResNet50Exits(nn.Module):
    """torchvision ResNet-50 (random weights, nothing downloaded) with three exits.

    Exit 1: pooled-linear head after ``layer2`` (512 channels); exit 2: after ``layer3``
    (1024); exit 3: ResNet-50's own ``avgpool`` + ``fc``. Input (B, 3, 224, 224).
    """

    def __init__(self, n_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import resnet50

        r = resnet50(weights=None, num_classes=n_classes)
        self.stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.head1 = _pool_head(512, n_classes)
        self.head2 = _pool_head(1024, n_classes)
        self.avgpool, self.fc = r.avgpool, r.fc

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f2 = self.layer2(self.layer1(self.stem(x)))
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [self.head1(f2), self.head2(f3), self.fc(torch.flatten(self.avgpool(f4), 1))]


def resnet50_exits() -> ResNet50Exits:
    """Factory for ``--model tests.models_zoo:resnet50_exits`` (eval mode, seeded)."""
    torch.manual_seed(0)
    return ResNet50Exits().eval()


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.h1, self.h2 = nn.Linear(8, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.l1(x)
        if a.sum() > 0:
            a = a * 2
        return [self.h1(a), self.h2(torch.relu(a))]


class DataDependentStaged(DataDependent):
    """:class:`DataDependent` with its stages declared by hand (``dyncal_stages``)."""

    def dyncal_stages(self) -> list[nn.Module]:
        return [_DDStage1(self), _DDStage2(self)]


class _DDStage1(nn.Module):
    def __init__(self, m: DataDependent) -> None:
        super().__init__()
        self.l1, self.h1 = m.l1, m.h1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.l1(x)
        if a.sum() > 0:
            a = a * 2
        return self.h1(a), a


class _DDStage2(nn.Module):
    def __init__(self, m: DataDependent) -> None:
        super().__init__()
        self.h2 = m.h2

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.h2(torch.relu(a)),)


class InputExit(nn.Module):
    """Exit 1 hands back the input itself: it is not computed by the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, self.l1(x)]


def linear_stack() -> LinearStack:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return LinearStack().eval()


def conv_stack() -> ConvStack:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return ConvStack().eval()


def perceiver_like() -> PerceiverLike:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return PerceiverLike().eval()


def data_dependent() -> DataDependent:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return DataDependent().eval()


def data_dependent_staged() -> DataDependentStaged:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return DataDependentStaged().eval()


def input_exit() -> InputExit:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return InputExit().eval()


def data_dependent_stages(model: nn.Module) -> list[nn.Module]:
    """A ``--stages`` function for :class:`DataDependent`."""
    assert isinstance(model, DataDependent)
    return [_DDStage1(model), _DDStage2(model)]


class FlattenedCarry(nn.Module):
    """Carries ``(B*T, D)`` rows between exits and reshapes them back with the batch size.

    Input (B, 5, 16). The carried tensor has no dimension of size B (its first dimension is
    B*T), and stage 2 needs B itself: rows cannot be cut from it, so early exit must run
    whole batches.
    """

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(16, 16), nn.Linear(16, 16)
        self.h1, self.h2 = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, t, d = x.shape
        flat = torch.relu(self.l1(x)).reshape(b * t, d)  # exit 1 reads it: carried to stage 2
        g = torch.relu(self.l2(flat)).reshape(b, t, d)
        return [self.h1(flat).reshape(b, t, 3).mean(1), self.h2(g.mean(1))]


class BatchStatistic(nn.Module):
    """Exit 1 centres features on the batch mean; exit 2 reads them: logits depend on other rows."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 16)
        self.h1, self.h2 = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.l1(x)
        a = torch.relu(a - a.mean(0))
        return [self.h1(a), self.h2(torch.relu(self.l2(a)))]


class TrainModeBatchNorm(nn.Module):
    """BatchNorm before exit 1, whose features exit 2 reads; in train mode it uses batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 16), nn.Linear(16, 16)
        self.bn = nn.BatchNorm1d(16)
        self.h1, self.h2 = nn.Linear(16, 3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = torch.relu(self.bn(self.l1(x)))
        return [self.h1(a), self.h2(torch.relu(self.l2(a)))]


def flattened_carry() -> FlattenedCarry:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return FlattenedCarry().eval()


def batch_statistic() -> BatchStatistic:
    """Factory (seeded, eval)."""
    torch.manual_seed(0)
    return BatchStatistic().eval()


def train_mode_batch_norm() -> TrainModeBatchNorm:
    """Factory (seeded, left in train mode on purpose)."""
    torch.manual_seed(0)
    return TrainModeBatchNorm().train()

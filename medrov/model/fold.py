"""Fold a fixed vocabulary into a YOLO-World (worldv2) network: a closed-set-shaped detector at YOLOv8 cost.

With a fixed prompt list every use of the text embeddings in worldv2 is affine in the image features, so it can be
computed once and stored as weights (YOLO-World's own re-parameterisation, ``docs/reparameterize.md``):

* ``WorldDetect``: per level ``cls = exp(s) * normalize(t) @ BN(W x + b) + bias``; batch-norm (eval statistics), the
  normalised text ``t`` (N, D), the logit scale ``s`` and the bias fold into one 1x1 convolution ``c3 -> N`` that
  replaces the ``c3 -> D`` embedding conv and the ``BNContrastiveHead``: the head becomes a plain ``Detect``.
* ``C2fAttn`` (``MaxSigmoidAttnBlock``): ``aw = max_n (ec(x) . gl(t_n)) / sqrt(hc) + bias`` per head. ``gl(t)``
  is a constant, so the embedding conv ``ec`` (conv + BN), the product with each guide, the 1/sqrt(hc) and the
  bias fold into one 1x1 conv ``c1 -> nh * N`` followed by the max over N (max(a) + b = max(a + b), and dividing by
  a positive constant commutes with max). What stays is the 3x3 ``proj_conv`` and the gating, as in the source.
* ``ImagePoolingAttn`` (YOLO-World v1 only, not in worldv2) updates the text with pooled *image* features, so the
  guides after it depend on each image and cannot be precomputed: :func:`fold` refuses such models (naming the
  reason) rather than fold part of them. v1's ``ContrastiveHead`` L2-normalises the image features, which is not
  affine either.

The folded network is an ultralytics ``DetectionModel`` whose layers are stock modules except
:class:`FoldedC2fAttn`; it predicts, fuses and exports to ONNX through ultralytics like a YOLOv8 checkpoint, and it
detects exactly its vocabulary, in order. Folding is done in float64 and cast back, so the folded model matches the
unfolded one to float32 rounding.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from medrov.errors import ModelError

log = logging.getLogger(__name__)


def _affine(conv_module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (out, in), b (out,)) in float64 of a 1x1 ultralytics ``Conv`` (conv + BN, fused or not, no activation)
    or a plain ``nn.Conv2d``."""
    conv = conv_module.conv if hasattr(conv_module, "conv") else conv_module
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ModelError(f"cannot fold a {conv.kernel_size} conv with {conv.groups} groups (1x1 expected)")
    w = conv.weight.detach().double().flatten(1)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    bn = getattr(conv_module, "bn", None)
    if bn is not None:
        a = bn.weight.detach().double() / (bn.running_var.detach().double() + bn.eps).sqrt()
        w, b = w * a[:, None], (b - bn.running_mean.detach().double()) * a + bn.bias.detach().double()
    act = getattr(conv_module, "act", None)
    if act is not None and not isinstance(act, nn.Identity):
        raise ModelError(f"cannot fold a conv followed by {type(act).__name__}")
    return w, b


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """An ``nn.Conv2d`` 1x1 holding ``weight`` (out, in) and ``bias`` in the dtype and device of ``like``."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(*weight.shape, 1, 1))
        conv.bias.copy_(bias)
    return conv.to(device=like.device, dtype=like.dtype).requires_grad_(False)


class FoldedMaxSigmoidAttn(nn.Module):
    """``MaxSigmoidAttnBlock`` for fixed guides: one 1x1 conv scores every (head, prompt) pair, max over prompts."""

    def __init__(self, attn: nn.Module, guide: torch.Tensor):
        """Fold ``attn`` (a ``MaxSigmoidAttnBlock``) with its text guide ``guide`` (N, gc)."""
        super().__init__()
        nh, hc = attn.nh, attn.hc
        gl = attn.gl  # the guide projection, computed once here in float64
        g = torch.nn.functional.linear(guide.detach().double(), gl.weight.detach().double(), gl.bias.detach().double())
        g = g.reshape(guide.shape[0], nh, hc)  # (N, nh, hc)
        if attn.ec is not None:
            w, b = _affine(attn.ec)
        else:  # the block's input is the embedding itself
            c1 = attn.proj_conv.conv.in_channels
            w, b = torch.eye(c1, dtype=torch.float64), torch.zeros(c1, dtype=torch.float64)
        w, b = w.reshape(nh, hc, -1), b.reshape(nh, hc)
        weight = torch.einsum("nmc,mck->mnk", g, w) / hc**0.5  # (nh, N, c1): head-major, as the max groups them
        bias = torch.einsum("nmc,mc->mn", g, b) / hc**0.5 + attn.bias.detach().double()[:, None]
        self.nh, self.n = nh, guide.shape[0]
        self.attn_conv = _conv1x1(weight.reshape(nh * self.n, -1), bias.reshape(-1), attn.gl.weight)
        self.proj_conv = attn.proj_conv
        scale = attn.scale.detach().clone() if isinstance(attn.scale, torch.Tensor) else torch.ones(1, nh, 1, 1)
        self.register_buffer("scale", scale.reshape(1, nh, 1, 1).to(attn.gl.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``proj_conv(x)`` per head by sigmoid(max over prompts of the folded scores)."""
        bs, _, h, w = x.shape
        aw = self.attn_conv(x).view(bs, self.nh, self.n, h, w).amax(dim=2)
        aw = aw.sigmoid() * self.scale
        x = self.proj_conv(x)
        x = x.view(bs, self.nh, -1, h, w) * aw.unsqueeze(2)
        return x.view(bs, -1, h, w)


class FoldedC2fAttn(nn.Module):
    """``C2fAttn`` whose attention has its guides folded in: ``forward(x)`` alone, like a ``C2f``."""

    def __init__(self, block: nn.Module, guide: torch.Tensor):
        """Take ``block``'s convolutions and bottlenecks (shared, not copied) and fold its attention with ``guide``."""
        super().__init__()
        self.c, self.cv1, self.cv2, self.m = block.c, block.cv1, block.cv2, block.m
        self.attn = FoldedMaxSigmoidAttn(block.attn, guide)
        for attr in ("i", "f", "type", "np"):  # the layer bookkeeping DetectionModel's forward relies on
            if hasattr(block, attr):
                setattr(self, attr, getattr(block, attr))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """cv1 -> split -> bottlenecks -> attention -> cv2, as ``C2fAttn.forward``."""
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        y.append(self.attn(y[-1]))
        return self.cv2(torch.cat(y, 1))


def _fold_head(head: nn.Module, text: torch.Tensor) -> None:
    """Turn a ``WorldDetect`` with ``BNContrastiveHead`` into a ``Detect`` for the N prompts ``text`` (N, D), in
    place."""
    from ultralytics.nn.modules.block import BNContrastiveHead
    from ultralytics.nn.modules.head import Detect

    t = torch.nn.functional.normalize(text.double(), dim=-1)
    for i, (seq, contrastive) in enumerate(zip(head.cv3, head.cv4)):
        if not isinstance(contrastive, BNContrastiveHead) or not hasattr(contrastive, "norm"):
            raise ModelError(
                f"head level {i}: {type(contrastive).__name__} is not an unfused BNContrastiveHead "
                "(only worldv2 heads fold: L2-normalised image features are not affine)"
            )
        w, b = _affine(seq[-1])  # (D, c3) embedding conv
        bn = contrastive.norm
        a = bn.weight.detach().double() / (bn.running_var.detach().double() + bn.eps).sqrt()
        shift = bn.bias.detach().double() - bn.running_mean.detach().double() * a
        s = contrastive.logit_scale.detach().double().exp()
        weight = s * (t * a) @ w  # (N, c3)
        bias = s * (t @ (a * b + shift)) + contrastive.bias.detach().double()
        head.cv3[i] = nn.Sequential(*list(seq)[:-1], _conv1x1(weight, bias, seq[-1].weight))
    del head.cv4
    head.__class__ = Detect  # WorldDetect only adds cv4 and a forward that takes the text
    head.nc = int(text.shape[0])
    head.no = head.nc + head.reg_max * 4


def fold(model: Any, names: Sequence[str] | None = None) -> nn.Module:
    """A folded copy of a worldv2 network with its current prompts (``txt_feats``, set by ``set_prompts``).

    Args:
        model: a ``WorldModel`` or an ultralytics ``YOLOWorld``/``YOLO`` wrapper of one (left unchanged).
        names: class names in prompt order (default: the model's ``names``).

    Returns:
        An ultralytics ``DetectionModel`` in eval mode: ``Detect`` head with ``nc`` = number of prompts, each
        ``C2fAttn`` replaced by :class:`FoldedC2fAttn`; no ``txt_feats``. Its ``fold_info`` records the names and a
        hash of the text embeddings.

    Raises:
        ModelError: not a YOLO-World model, an ``ImagePoolingAttn`` (YOLO-World v1: image-dependent text), a head
            that is not worldv2's, or prompts and names of different lengths.
    """
    from ultralytics.engine.model import Model
    from ultralytics.nn.modules.block import C2fAttn, ImagePoolingAttn
    from ultralytics.nn.modules.head import WorldDetect
    from ultralytics.nn.tasks import DetectionModel, WorldModel

    net = model.model if isinstance(model, Model) else model
    if not isinstance(net, WorldModel):
        raise ModelError(f"{type(net).__name__} is not a YOLO-World model: nothing to fold")
    if any(isinstance(m, ImagePoolingAttn) for m in net.model):
        raise ModelError(
            "this YOLO-World (v1) model has an ImagePoolingAttn: it updates the text with pooled image "
            "features, so the guides after it depend on each image and cannot be folded (use worldv2)"
        )
    if not isinstance(net.model[-1], WorldDetect):
        raise ModelError(f"last layer is {type(net.model[-1]).__name__}, not WorldDetect")
    text = net.txt_feats.detach()
    text = text.reshape(-1, text.shape[-1])  # (1, N, D) -> (N, D): one vocabulary for every image
    names = list(names) if names is not None else [str(v) for _, v in sorted(dict(net.names).items())]
    if len(names) != text.shape[0]:
        raise ModelError(f"{len(names)} names but {text.shape[0]} prompt embeddings (set the prompts first)")

    folded = copy.deepcopy(net).eval()
    folded.__class__ = DetectionModel  # same layers and bookkeeping; forward without text
    for attr in ("txt_feats", "clip_model"):
        folded.__dict__.pop(attr, None)
    guide = text.to(next(folded.parameters()))
    for k, layer in enumerate(folded.model):
        if isinstance(layer, C2fAttn):
            folded.model[k] = FoldedC2fAttn(layer, guide)
    _fold_head(folded.model[-1], guide)
    folded.names = dict(enumerate(names))
    folded.fold_info = {"names": names, "text_sha256": hashlib.sha256(text.float().cpu().numpy().tobytes()).hexdigest()}
    folded.requires_grad_(False)
    log.info(
        "folded %d prompts into the network (%d C2fAttn blocks, head -> Detect)",
        len(names),
        sum(isinstance(m, FoldedC2fAttn) for m in folded.model),
    )
    return folded


def allow_folded_checkpoints() -> None:
    """Let restricted (``weights_only``) loads rebuild folded networks: their two layer classes hold only tensors and
    stock submodules, like ultralytics' own layers that its restricted loader allows."""
    torch.serialization.add_safe_globals([FoldedC2fAttn, FoldedMaxSigmoidAttn])


def save_folded(folded: nn.Module, path: str | Path, train_args: dict[str, Any] | None = None) -> Path:
    """Save the PyTorch form of a folded network as an ultralytics checkpoint (``YOLO(path)`` loads it).

    Loading it needs ``medrov`` importable (it holds :class:`FoldedC2fAttn`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"model": folded, "train_args": dict(train_args or {}), "medrov_fold": folded.fold_info}, str(tmp))
    tmp.replace(path)  # atomic: a reader never sees half a checkpoint
    return path


def folded_yolo(folded: nn.Module):
    """An ultralytics ``YOLO`` wrapper (predict, export) around a folded network, through its PyTorch form."""
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(prefix="medrov-fold-") as tmp:
        return YOLO(str(save_folded(folded, Path(tmp) / "folded.pt")), task="detect")

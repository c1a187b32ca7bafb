"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) read from its own file into torch.

The file is dlib's DNN serialisation: the loss layer, the nested layer versions, the input layer, then one record
per layer from the input upwards, each followed by three booleans and three empty tensors. Integers are a byte
holding their length (+0x80 when negative) and then little-endian bytes; floats are an integer mantissa and an
integer exponent; tensors are version 2, (n, k, nr, nc) and raw little-endian float32.

The network: 7x7/2 conv 32, 3x3/2 max pool, residual stages of 32, 64, 128, 256, 256 channels (each batch norm
folded into an affine layer, here folded into the conv before it), global average pool, fc 256 -> 128 without
bias. Stride-2 convolutions and pools have no padding (150 -> 72 -> 35 -> 17 -> 8 -> 4 -> 2); a residual sum of
unequal shapes zero-pads the smaller at the end of each dimension. Input: (RGB - mean) / 256; output: the raw
128-d descriptor (dlib's `compute_face_descriptor`).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP = 150
_EMPTY_TRAILER = bytes([1, 2] + [1, 0] * 4) * 3  # three empty tensors (version 2, shape 0x0x0x0)
_LAYERS = ("con_4", "affine_", "relu_", "add_prev_", "max_pool_2", "avg_pool_2", "fc_2")
# (stage channels, blocks, first block downsamples) of dlib's dnn_face_recognition_ex network, input side first
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DlibFormatError(ValueError):
    """A file that is not dlib's face-recognition network, or whose layers do not match its architecture."""


@dataclass
class Record:
    name: str
    params: np.ndarray | None  # con_4 / affine_ / fc_2 parameters, flat float32
    ints: tuple[int, ...]  # con_4: filters, nr, nc, stride_y, stride_x, pad_y, pad_x; pools: nr, nc, sy, sx, py, px


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.b, self.pos, self.path = data, 0, path

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: not dlib's face-recognition network: {what} (at byte {self.pos})")

    def int(self) -> int:
        if self.pos >= len(self.b):
            raise self.fail("file ends early")
        c = self.b[self.pos]
        n = c & 0x7F
        if n > 8:
            raise self.fail(f"bad integer header 0x{c:02x}")
        v = int.from_bytes(self.b[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -v if c & 0x80 else v

    def str(self) -> str:
        n = self.int()
        if not 0 <= n <= 64:
            raise self.fail(f"expected a name, found length {n}")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        try:
            return s.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"expected a name, found bytes {s[:16]!r}") from None

    def float(self) -> float:
        m = self.int()
        return m * 2.0 ** self.int()

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("expected a tensor (version 2)")
        n, k, nr, nc = (self.int() for _ in range(4))
        count = n * k * nr * nc
        if count < 0 or self.pos + 4 * count > len(self.b):
            raise self.fail(f"a tensor of {n}x{k}x{nr}x{nc} floats runs past the end of the file (file ends early)")
        arr = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return arr.astype(np.float32)

    def trailer(self) -> None:
        """Skip what follows a layer's own fields: three booleans ('0'/'1') and three empty tensors."""
        end = self.b.find(_EMPTY_TRAILER, self.pos, self.pos + 256)
        if end < 3 or not all(c in b"01" for c in self.b[end - 3:end]):
            raise self.fail("a layer record does not end as dlib's do")
        self.pos = end + len(_EMPTY_TRAILER)

    def peek_layer(self) -> bool:
        save = self.pos
        try:
            return self.str() in _LAYERS
        except DlibFormatError:
            return False
        finally:
            self.pos = save


def read_records(path: str | os.PathLike) -> tuple[tuple[float, float, float], list[Record]]:
    """The input layer's channel means and every layer record, input side first."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    r.int()  # the loss layer's version
    if (name := r.str()) != "loss_metric_2":
        raise r.fail(f"the loss layer is {name!r}, expected 'loss_metric_2'")
    r.float(), r.float()  # margin, distance threshold
    while True:  # the nested layer versions, outermost first, up to the input layer
        save = r.pos
        try:
            if r.str() == "input_rgb_image_sized":
                break
        except DlibFormatError:
            pass
        r.pos = save
        if r.int() not in (1, 2, 3):
            raise r.fail("expected the layer versions before 'input_rgb_image_sized'")
    means = (r.float(), r.float(), r.float())
    if (r.int(), r.int()) != (CHIP, CHIP):
        raise r.fail(f"the input is not {CHIP}x{CHIP}")
    records = []
    while r.pos < len(r.b):
        while not r.peek_layer():  # an add_layer on the input layer writes one more integer after its trailer
            r.int()
        name = r.str()
        params, ints = None, ()
        if name == "con_4":
            params = r.tensor()
            ints = tuple(r.int() for _ in range(7))
        elif name == "affine_":
            params = r.tensor()
        elif name in ("max_pool_2", "avg_pool_2"):
            ints = tuple(r.int() for _ in range(6))
        elif name == "fc_2":
            ints = (r.int(), r.int())  # outputs, inputs
            params = r.tensor()
            ints += (r.int(),)  # bias mode: 1 = no bias
        r.trailer()
        records.append(Record(name, params, ints))
        if name == "fc_2":
            break
    return means, records


def _expected_layers() -> list[str]:
    names = ["con_4", "affine_", "relu_", "max_pool_2"]
    for _, blocks, down in STAGES:
        for i in range(blocks):
            names += ["con_4", "affine_", "relu_", "con_4", "affine_"]
            names += ["avg_pool_2", "add_prev_", "relu_"] if down and i == 0 else ["add_prev_", "relu_"]
    return names + ["avg_pool_2", "fc_2"]


def _folded(con: Record, affine: Record, conv: nn.Conv2d, where: str, path) -> dict[str, torch.Tensor]:
    """The weight and bias of a con_4 record with the affine (folded batch norm) after it folded in,
    y = g * (W x + b) + beta, checked against the torch conv it is for."""
    filters, nr, nc, sy, sx, py, px = con.ints
    want = (conv.out_channels, *conv.kernel_size, *conv.stride, *conv.padding)
    if (filters, nr, nc, sy, sx, py, px) != want:
        raise DlibFormatError(f"{path}: {where} is a {filters}-filter {nr}x{nc} conv with stride ({sy}, {sx}) and "
                              f"padding ({py}, {px}); dlib's face-recognition network has {want}")
    cin = conv.in_channels
    w = con.params[: filters * cin * nr * nc].reshape(filters, cin, nr, nc)
    bias = con.params[filters * cin * nr * nc:]
    gamma, beta = affine.params[:filters], affine.params[filters:]
    return {"weight": torch.from_numpy(w * gamma[:, None, None, None]),
            "bias": torch.from_numpy(bias * gamma + beta)}


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of unequal shape are zero-padded at the end of each dimension, then added."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def pad(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
    return pad(a) + pad(b)


class Block(nn.Module):
    """A residual block: conv (stride 2, no padding, when it downsamples), relu, conv; skip through a 2x2 average
    pool."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(_add_prev(y, F.avg_pool2d(x, 2, 2) if self.down else x))


# where the frozen trunk may end: the number of residual blocks below the cut, and the map it leaves
CUTS = {"stage2": 7, "stage3": 10, "stage4": 13}
CUT_SHAPES = {"stage2": (64, 17, 17), "stage3": (128, 8, 8), "stage4": (256, 4, 4)}


class DlibBody(nn.Module):
    """The stem and the residual blocks: (RGB - mean) / 256 chips [B, 3, 150, 150] -> [B, 256, 2, 2]; trunk()
    and top() split it at a cut."""

    cut_shapes = CUT_SHAPES

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 7, stride=2)
        blocks, cin = [], 32
        for chans, n, down in STAGES:
            for i in range(n):
                blocks.append(Block(cin, chans, down and i == 0))
                cin = chans
        self.blocks = nn.Sequential(*blocks)

    def trunk(self, x: torch.Tensor, cut: str) -> torch.Tensor:
        return self.blocks[:CUTS[cut]](F.max_pool2d(F.relu(self.stem(x)), 3, 2))

    def top(self, a: torch.Tensor, cut: str) -> torch.Tensor:
        return self.blocks[CUTS[cut]:](a)

    def trunk_parameters(self, cut: str) -> list[nn.Parameter]:
        return list(self.stem.parameters()) + list(self.blocks[:CUTS[cut]].parameters())

    def top_parameters(self, cut: str) -> list[nn.Parameter]:
        return list(self.blocks[CUTS[cut]:].parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.max_pool2d(F.relu(self.stem(x)), 3, 2))


def descriptor_head() -> nn.Sequential:
    """Global average pool and the fc 256 -> 128 without bias: the face descriptor."""
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     fc=nn.Linear(256, 128, bias=False)))


class DlibFaceResNet(nn.Module):
    """dlib's face descriptor network; forward takes (RGB - mean) / 256 chips [B, 3, 150, 150], RGB order."""

    def __init__(self, means: tuple[float, float, float]):
        super().__init__()
        self.body, self.head = DlibBody(), descriptor_head()
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def normalize(self, chips_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 150, 150, 3] RGB chips -> the network's input."""
        return (chips_u8.permute(0, 3, 1, 2).float() - self.mean) / 256.0


def dat_state_dict(path: str | os.PathLike) -> tuple[tuple[float, float, float], dict[str, torch.Tensor]]:
    """The input means and the weights of dlib's .dat as a state dict of {body: DlibBody, head:
    descriptor_head()}; a file of another layout is an error naming the first layer that differs."""
    means, records = read_records(path)
    want = _expected_layers()
    got = [r.name for r in records]
    if got != want:
        i = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        raise DlibFormatError(f"{path}: layer {i} (from the input) is {got[i] if i < len(got) else 'missing'!r}, "
                              f"dlib's face-recognition network has {want[i] if i < len(want) else 'nothing'!r} "
                              f"there ({len(got)} layers, expected {len(want)})")
    body = DlibBody()
    it = iter(records)
    sd = {f"body.stem.{k}": v for k, v in _folded(next(it), next(it), body.stem, "the stem", path).items()}
    next(it), next(it)  # relu, max pool 3x3/2
    for b, block in enumerate(body.blocks):
        con1, aff1, _, con2, aff2 = (next(it) for _ in range(5))
        for name, con, aff in (("conv1", con1, aff1), ("conv2", con2, aff2)):
            for k, v in _folded(con, aff, getattr(block, name), f"block {b} {name}", path).items():
                sd[f"body.blocks.{b}.{name}.{k}"] = v
        for _ in range(3 if block.down else 2):  # (avg pool), add_prev, relu
            next(it)
    next(it)  # global average pool
    fc_rec = next(it)
    outputs, inputs, bias_mode = fc_rec.ints
    if (outputs, inputs, bias_mode) != (128, 256, 1):
        raise DlibFormatError(f"{path}: fc_2 is {inputs} -> {outputs} with bias mode {bias_mode}, expected "
                              "256 -> 128 without bias")
    sd["head.fc.weight"] = torch.from_numpy(fc_rec.params.reshape(inputs, outputs).T.copy())  # dlib: x @ W
    return means, sd


def load_dlib_resnet(path: str | os.PathLike) -> DlibFaceResNet:
    """Build the torch network from dlib's .dat file."""
    means, sd = dat_state_dict(path)
    net = DlibFaceResNet(means)
    net.load_state_dict({**sd, "mean": net.mean}, strict=True)
    return net.eval()

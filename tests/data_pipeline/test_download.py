"""Corpus download: blob-id checks and atomic writes, served from a local file:// mirror."""

import shutil

import pytest

from data_pipeline import download


def test_blob_ids_of_the_shared_copies_match_upstream(people_daily_dir):
    files = download.CORPORA["people_daily"]["files"]
    for split in ("dev", "test"):
        filename, blob_id = files[split]
        assert download.git_blob_id(people_daily_dir / filename) == blob_id


def test_download_checks_and_keeps_good_files(tmp_path, people_daily_dir):
    mirror = people_daily_dir.resolve().as_uri() + "/"
    out = tmp_path / "pd"
    paths = download.download_corpus("people_daily", out, splits=["dev"], base_url=mirror)
    assert paths["dev"].read_bytes() == (people_daily_dir / "example.dev").read_bytes()
    messages = []
    download.download_corpus("people_daily", out, splits=["dev"], base_url=mirror,
                             log=messages.append)
    assert messages == [f"{out / 'example.dev'}: present and checked"]


def test_wrong_content_is_refused_and_nothing_is_left(tmp_path, people_daily_dir):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = (people_daily_dir / "example.test").read_bytes()
    (mirror / "example.test").write_bytes(data[: len(data) // 2])  # truncated
    out = tmp_path / "pd"
    with pytest.raises(download.DownloadError, match="expected a047f4ed"):
        download.download_corpus("people_daily", out, splits=["test"],
                                 base_url=mirror.as_uri() + "/")
    assert list(out.iterdir()) == []
    shutil.rmtree(mirror)
    with pytest.raises(download.DownloadError, match="download failed"):
        download.download_corpus("people_daily", out, splits=["test"],
                                 base_url=mirror.as_uri() + "/")
    assert list(out.iterdir()) == []


def test_unknown_corpus_or_split():
    with pytest.raises(ValueError, match="unknown corpus"):
        download.download_corpus("conll9999", "x")
    with pytest.raises(ValueError, match="has no split"):
        download.download_corpus("people_daily", "x", splits=["validation"])


def test_command_line_flags_help_and_errors(tmp_path, people_daily_dir, capsys):
    mirror = people_daily_dir.resolve().as_uri() + "/"
    download.main([f"--output_dir={tmp_path / 'pd'}", "--splits=dev,test", f"--base_url={mirror}"])
    assert sorted(p.name for p in (tmp_path / "pd").iterdir()) == ["example.dev", "example.test"]
    assert "example.test: downloaded and checked" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        download.main(["--helpfull"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("Downloading the public corpora") and "--splits" in help_text
    for argv, message in ((["--splits=dev"], "--output_dir must have a value"),
                          ([f"--output_dir={tmp_path}", "--corpus=conll"], "should be one of"),
                          ([f"--output_dir={tmp_path}", "dev"], "unexpected arguments ['dev']"),
                          ([f"--output_dir={tmp_path}", "--splits=validation"], "has no split")):
        with pytest.raises(SystemExit) as stop:
            download.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and message in err, err

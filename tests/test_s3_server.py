"""The throwaway S3 server (tests/s3_server.py) works and refuses requests it should refuse."""

from __future__ import annotations

import pytest


def test_round_trip_through_plain_boto3_client(s3_store, monkeypatch):
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # would override or spoil the keys
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_store.env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")  # endpoint, credentials and region from the environment
    payload = bytes(range(256)) * 64
    client.put_object(Bucket=s3_store.bucket, Key="round/trip.bin", Body=payload)
    got = client.get_object(Bucket=s3_store.bucket, Key="round/trip.bin")["Body"].read()
    assert got == payload


def test_wrong_key_and_unsigned_requests_are_refused(s3_store):
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = s3_store.client(aws_secret_access_key=s3_store.secret_key + "-wrong")
    with pytest.raises(ClientError) as e:
        client.list_objects_v2(Bucket=s3_store.bucket)
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

    anonymous = s3_store.client(config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError) as e:
        anonymous.list_objects_v2(Bucket=s3_store.bucket)
    assert e.value.response["Error"]["Code"] == "AccessDenied"

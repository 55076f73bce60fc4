"""Request checks of the app's HTTP layer (drasclr_monailabel.tasks.routes) and training limits."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from starlette.datastructures import UploadFile

from drasclr_monailabel.errors import ConfigError
from drasclr_monailabel.tasks.conf import TRAINING_LIMITS, check_training_options
from drasclr_monailabel.tasks.routes import MAX_SUFFIX_CHARS, _has_control_character, check_upload_name, json_object


@pytest.mark.parametrize("text, expected", [("", {}), ("{}", {}), ('{"a": 1}', {"a": 1})])
def test_json_object_accepts_objects(text, expected):
    assert json_object("params", text) == expected


@pytest.mark.parametrize("text, reason", [("[1]", "must be a JSON object, got list"), ("3", "got int"),
                                          ("{x", "not valid JSON"), ('"s"', "got str")])
def test_json_object_refuses_anything_else_with_400(text, reason):
    with pytest.raises(HTTPException) as caught:
        json_object("params", text)
    assert caught.value.status_code == 400 and reason in caught.value.detail


def test_upload_names_with_long_suffixes_are_refused():
    check_upload_name(UploadFile(file=None, filename="scan.nii.gz"))
    check_upload_name(None)
    with pytest.raises(HTTPException) as caught:
        check_upload_name(UploadFile(file=None, filename="scan." + "a" * MAX_SUFFIX_CHARS))
    assert caught.value.status_code == 422


@pytest.mark.parametrize("path, query, bad", [("/infer/lung", b"image=case_a", False), ("/infer/lung", b"image=a%00b", True),
                                              ("/datastore/image", b"image=a%0Ab", True), ("/x\x00", b"", True),
                                              ("/datastore/", b"image=a+b%20c", False)])
def test_control_characters_in_path_or_query_are_found(path, query, bad):
    assert _has_control_character({"path": path, "query_string": query}) is bad


@pytest.mark.parametrize("key", sorted(TRAINING_LIMITS))
def test_training_options_are_bounded(key):
    check_training_options({key: 32 if key == "patch_size" else TRAINING_LIMITS[key]}, "train request")
    with pytest.raises(ConfigError, match=f"'{key}' must be at most"):
        check_training_options({key: TRAINING_LIMITS[key] + 32}, "train request")


def test_token_check_takes_realm_key_signatures_only():
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from drasclr_monailabel.tasks.auth import decode

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert decode(jwt.encode({"sub": "a"}, key, algorithm="RS256"), public)["sub"] == "a"
    with pytest.raises(jwt.InvalidTokenError):
        decode(jwt.encode({"sub": "a"}, None, algorithm="none"), public)

"""One way to cut a mapping to size: the redactor's limit and the bounding walk share it.

``limit_size`` (after the app's ``redact=`` hook) and ``bound_mapping`` (before redaction)
cut strings with the same walker, which counts a lone surrogate's bytes instead of failing
on it: the hook's output is the app's, and may hold anything.
"""

from __future__ import annotations

import json
from typing import Any

import obs_sdk as obs
from obs_sdk._delivery._redact import Redactor, limit_size, to_json
from obs_sdk._delivery._sanitize import bound_mapping
from obs_sdk.testing import capture

LONE = "\ud800"  # half of a surrogate pair: not encodable as UTF-8


def with_blob(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "blob": LONE + "x" * 5000}


class TestOneCutter:
    def test_an_oversized_hook_result_with_a_lone_surrogate_is_cut(self) -> None:
        """The hook's output is cut to the limit, the surrogate counted, nothing raised."""
        cleaned = Redactor(redact=with_blob).clean({"n": 1}, 512)

        assert cleaned["_truncated"] is True and cleaned["n"] == 1
        assert cleaned["blob"].endswith("bytes]") and "…[truncated " in cleaned["blob"]
        assert len(to_json(cleaned).encode("utf-8", "surrogatepass")) <= 512

    def test_the_record_goes_out_bounded_and_sanitized(self, sqlite_url: str) -> None:
        """Through configure(redact=...): the record is sent, within the limit, clean."""
        obs.configure(database=sqlite_url, redact=with_blob, max_metadata_bytes=512)

        with capture() as cap:
            obs.record_audit("op", metadata={"n": 1})

        (metadata,) = [record["metadata"] for record in cap.audits]
        assert metadata["_truncated"] is True and LONE not in metadata["blob"]
        assert len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()) <= 512

    def test_both_bounds_cut_a_string_alike(self) -> None:
        """limit_size and bound_mapping give a long string the same cut and marker."""
        data = {"text": "é" * 3000, "n": 1}

        assert limit_size(data, 1024) == bound_mapping(data, 1024)[0]

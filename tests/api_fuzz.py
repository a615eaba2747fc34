"""A bounded, reproducible fuzz run of an HTTP API from its OpenAPI description (schemathesis).

:func:`fuzz_api` loads ``{base_url}/openapi.json`` with schemathesis' Python API, and for
every operation the document has at run time (routes added later are covered without a
change here) lets hypothesis generate cases: schema-valid ones and schema-violating ones
(schemathesis' positive and negative modes). Each case is sent over a real HTTP connection
(``requests``) and its answer judged by the checks in :data:`CHECKS`.

Two additions take cases past the first refusal: ``uploads`` (real files, e.g. a short mp4,
that replace a generated binary form field of that name in about one positive case of four,
so uploads are decoded, generated for and answered 200 / 202, not only refused as junk), and
ids from answers (a string a 2xx JSON answer carried under a key that names a path
parameter, e.g. the ``job_id`` of a ``POST /v1/jobs``, is used for that parameter in about
one case of two; operations run in document order with the DELETE ones last, so an id is
read before it is deleted). A 503 with ``Retry-After`` is load shedding (``allow_busy``):
the run's real uploads fill the job queue, and the other checks still judge that answer.

Nothing is shrunk or retried: a failed check is recorded with the request that caused it
and the run goes on, so the requests are at most ``max_examples`` per operation and mode,
and the time ``max_seconds`` (shared out among the operations still to run, those with a
request body weighted :data:`BODY_WEIGHT`, so a slow one cannot starve the rest; an
operation's hypothesis run is stopped at the end of its share, after its first case) plus
the requests that end late: one for the operation running, and the first one of each of the
operations after it when the budget is spent before them. Failures are reported once per (check, status, title) and operation.

Checks left out, and why:

* ``positive_data_acceptance``: a schema-valid upload is any bytes in the ``video`` part,
  and random bytes are not a video: the service rightly answers 415. The schema cannot say
  "a decodable video", so this check would only report the fuzzer's own data.
* ``max_response_time``: the run is bounded as a whole (``max_seconds``, and ``timeout_s``
  per request); the speed of one answer on a busy 2-core test machine is not a contract.
* ``use_after_free``, ``ensure_resource_availability``, ``ignored_auth``,
  ``unsupported_method``, ``missing_required_header``, ``object_level_authorization``,
  ``allow_header_conformance``: they belong to schemathesis' stateful and coverage phases
  (sequences of calls, extra requests with other methods), not to one generated case.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Mapping, Sequence

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import Binary

#: The checks every answer goes through (see the module docstring for those left out).
CHECKS = (
    not_a_server_error,  # no 5xx, whatever the input
    status_code_conformance,  # the status is one the operation declares
    content_type_conformance,  # the Content-Type is one declared for that status
    response_schema_conformance,  # a JSON body validates against the declared schema
    response_headers_conformance,  # declared headers (Location, Retry-After) match their schema
    negative_data_rejection,  # a schema-violating request is refused with a 4xx
)

#: Longest shown request (a ``curl`` line) in a failure.
MAX_SHOWN_REQUEST = 2000
#: Time share of an operation with a request body, against 1 for one without: a body has more
#: to vary, and its cases cost more (an upload is read, inspected, perhaps generated for).
BODY_WEIGHT = 4
#: Values kept per answer key for reuse as path parameters (the latest ones).
MAX_KNOWN_VALUES = 8


def _curl(case, headers: dict[str, str] | None) -> str:
    try:
        text = case.as_curl_command(headers=headers)
    except Exception as exc:  # a case curl cannot spell: say what was sent instead
        text = f"{case.method} {case.formatted_path} (no curl line: {exc}); case {case!r}"
    return text if len(text) <= MAX_SHOWN_REQUEST else text[:MAX_SHOWN_REQUEST] + " ..."


def _size(value: Any) -> int:
    if isinstance(value, Binary):  # a str subclass of length 0 that holds the bytes
        return len(value.data)
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 16


def fuzz_api(base_url: str, *, max_examples: int, max_seconds: float, seed: int = 0,
             modes: tuple[str, ...] = ("positive", "negative"),
             uploads: Mapping[str, Sequence[bytes]] | None = None, upload_fields: Mapping[str, Any] | None = None,
             headers: dict[str, str] | None = None, timeout_s: float = 30.0, max_body_bytes: int = 256 * 1024,
             allow_busy: bool = True) -> dict[str, Any]:
    """Fuzzes every operation of ``{base_url}/openapi.json`` and reports what it saw.

    Args:
        base_url: the service's root URL (``http://127.0.0.1:PORT``); its Host is what the
            requests carry.
        max_examples: cases at most per operation and generation mode.
        max_seconds: time budget of the whole run (s), shared out among the operations still
            to run; an operation's run stops at the end of its share (``out_of_time``), but
            not before its first case.
        seed: hypothesis seed: the same seed and schema generate the same cases.
        modes: schemathesis generation modes: ``positive`` (schema-valid requests) and / or
            ``negative`` (schema-violating ones).
        uploads: form field name -> real files (bytes); one of them replaces a generated
            binary field of that name in about one case of four (positive cases only).
        upload_fields: form fields set in a case that got a real file, e.g. ``{"num_steps": 2}``:
            what a real upload costs is the work it starts, and schema-valid but cheap settings
            keep the run's time on the fuzzing.
        headers: headers added to every request (an API key).
        timeout_s: per-request timeout (s); a request that takes longer is a failure.
        max_body_bytes: generated bodies larger than this are not sent (``skipped``): big
            uploads only cost time, the service's size limits have their own tests.
        allow_busy: a 503 with ``Retry-After`` (the service shedding load the run's own real
            uploads made, e.g. ``max_jobs`` jobs running) is not a server error; it must still
            be declared by the operation, with its body and header schemas. Every other 5xx is.

    Returns:
        ``{"base_url", "seed", "seconds", "cases", "operations": {label: {"cases",
        "skipped", "out_of_time", "uploads", "reused_ids", "busy", "statuses": {status:
        count}, "failures": [...]}}, "failures": [...], "schema_errors": [...]}``; each
        failure is ``{"operation",
        "check", "title", "message", "status", "request"}`` (``request``: a curl line that
        repeats it). ``uploads`` / ``reused_ids``: cases sent with a real file / an id from
        an earlier answer; ``busy``: 503 answers with ``Retry-After`` (see ``allow_busy``).
    """
    t0 = time.monotonic()
    # An explicit default config: a schemathesis.toml in the working directory must not change the run.
    schema = schemathesis.openapi.from_url(f"{base_url.rstrip('/')}/openapi.json", config=schemathesis.Config(),
                                           timeout=timeout_s)
    operations, schema_errors = [], []
    for result in schema.get_all_operations():
        try:
            operations.append(result.ok())
        except Exception:  # an operation schemathesis cannot read: the document itself is wrong
            schema_errors.append(str(result.err()))
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # stable: document order, deletes last
    run = _Run(base_url, [GenerationMode(m) for m in modes], max_examples, seed, dict(uploads or {}),
               dict(upload_fields or {}), headers, timeout_s, max_body_bytes, allow_busy)
    report: dict[str, Any] = {"base_url": base_url, "seed": seed, "operations": {}, "failures": [],
                              "schema_errors": schema_errors}
    try:
        weights = [BODY_WEIGHT if op.body else 1 for op in operations]
        for i, op in enumerate(operations):
            # This operation's share of the time left: the rest of the budget, by weight, over the operations left.
            share = max(0.0, t0 + max_seconds - time.monotonic()) * weights[i] / sum(weights[i:])
            stats = run.operation(op, time.monotonic() + share)
            report["operations"][op.label] = stats
            report["failures"] += stats["failures"]
    finally:
        run.session.close()
    report["seconds"] = round(time.monotonic() - t0, 2)
    report["cases"] = sum(s["cases"] for s in report["operations"].values())
    return report


class _OutOfTime(BaseException):
    """Ends an operation's hypothesis run at its deadline. A BaseException, not an Exception:
    hypothesis takes an Exception for a failing case, and would report and shrink it."""


class _Run:
    """The state of one :func:`fuzz_api` run: its session, settings and the values answers carried."""

    def __init__(self, base_url: str, modes: list[GenerationMode], max_examples: int, seed: int,
                 uploads: dict[str, Sequence[bytes]], upload_fields: dict[str, Any], headers: dict[str, str] | None,
                 timeout_s: float, max_body_bytes: int, allow_busy: bool):
        self.base_url = base_url
        self.modes = modes
        self.max_examples = max_examples
        self.seed = seed
        self.uploads = {k: list(v) for k, v in uploads.items() if v}
        self.upload_fields = upload_fields
        self.headers = headers
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.allow_busy = allow_busy
        self.session = requests.Session()
        self.known: dict[str, list[str]] = {}  # answer key -> string values of 2xx JSON answers

    def operation(self, op, deadline: float) -> dict[str, Any]:
        """One operation's cases, mode after mode, until ``max_examples`` each or ``deadline``.

        Args:
            op: the schemathesis ``APIOperation``.
            deadline: ``time.monotonic()`` after which no case is sent.
        """
        stats: dict[str, Any] = {"cases": 0, "skipped": 0, "out_of_time": False, "uploads": 0, "reused_ids": 0,
                                 "busy": 0, "statuses": collections.Counter(), "failures": []}
        seen: set[tuple[str, str, str]] = set()  # one report per (check, status, title): not one per case

        def record(check: str, title: str, message: str, status: int | None, case) -> None:
            key = (check, str(status), title)
            if key not in seen:
                seen.add(key)
                stats["failures"].append({"operation": op.label, "check": check, "title": title,
                                          "message": message.strip(), "status": status,
                                          "request": _curl(case, self.headers)})

        def send(case, data) -> None:
            if time.monotonic() > deadline and stats["cases"]:  # the first case goes even late: none unchecked
                stats["out_of_time"] = True
                raise _OutOfTime
            if _size(case.body) > self.max_body_bytes:
                stats["skipped"] += 1
                return
            self._use_known(case, data, stats)
            stats["cases"] += 1
            try:
                response = case.call(base_url=self.base_url, session=self.session, headers=self.headers,
                                     timeout=self.timeout_s)
            except requests.RequestException as exc:  # no answer at all (reset, timeout): worse than a 500
                record("transport", type(exc).__name__, str(exc), None, case)
                return
            stats["statuses"][response.status_code] += 1
            self._remember(response)
            checks = list(CHECKS)
            if self.allow_busy and response.status_code == 503 and response.headers.get("retry-after"):
                # Load shedding, not a fault: the other checks still require the operation to declare
                # the 503, its JSON body and an integer Retry-After.
                checks.remove(not_a_server_error)
                stats["busy"] += 1
            try:
                case.validate_response(response, checks=checks, headers=self.headers,
                                       transport_kwargs={"base_url": self.base_url, "session": self.session})
            except FailureGroup as group:
                for failure in group.exceptions:
                    record(_check_name(failure), failure.title, failure.message, response.status_code, case)
            except Failure as failure:
                record(_check_name(failure), failure.title, failure.message, response.status_code, case)

        for mode in self.modes:
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as exc:  # nothing of this operation can be generated in this mode
                stats.setdefault("no_strategy", {})[mode.value] = str(exc)
                continue
            test = hypothesis.given(case=strategy, data=st.data())(send)
            test = settings(max_examples=self.max_examples, deadline=None, database=None, phases=[Phase.generate],
                            suppress_health_check=list(HealthCheck), print_blob=False)(test)
            try:
                hypothesis.seed(self.seed)(test)()
            except _OutOfTime:
                break
            except hypothesis.errors.Unsatisfiable:  # a negative mode with nothing to negate (no parameters)
                stats.setdefault("no_strategy", {})[mode.value] = "unsatisfiable"
        stats["statuses"] = dict(sorted(stats["statuses"].items()))
        return stats

    def _use_known(self, case, data, stats: dict[str, Any]) -> None:
        """Puts real files and ids from earlier answers into ``case`` (drawn with ``data``: reproducible).

        The containers are edited in place, not assigned: ``Case.call`` takes in-place edits made
        before it as the case's starting state, while an assignment makes schemathesis judge the
        body again, and a body with binary parts always judges as schema-violating (a positive
        case would be checked as a negative one).
        """
        meta = case.meta
        body = case.body
        # Positive bodies only: a negative one is refused for its options before the file is looked at.
        if isinstance(body, dict) and meta is not None and meta.generation.mode.is_positive:
            fields = [k for k, v in body.items() if k in self.uploads and isinstance(v, Binary)]
            # 3 of 0..3, not 0: hypothesis starts from the simplest draws, and a run's first cases
            # should not all be the (slow) real ones
            if fields and data.draw(st.integers(0, 3), label="use an upload") == 3:
                for k in fields:
                    body[k] = Binary(data.draw(st.sampled_from(self.uploads[k]), label=f"upload {k}"))
                body.update(self.upload_fields)
                stats["uploads"] += 1
        path = meta.components.get(ParameterLocation.PATH) if meta is not None else None
        if path is not None and path.mode.is_negative:
            return  # its path parameters are the violation: a known id would make the case valid
        names = [k for k in case.path_parameters if self.known.get(k)]
        if names and data.draw(st.booleans(), label="reuse an id"):
            for k in names:
                case.path_parameters[k] = data.draw(st.sampled_from(self.known[k]), label=f"known {k}")
            stats["reused_ids"] += 1

    def _remember(self, response) -> None:
        """Keeps the short string values of a 2xx JSON object answer, by key."""
        content_type = " ".join(response.headers.get("content-type", []))  # lower-case keys, list values
        if not 200 <= response.status_code < 300 or "json" not in content_type:
            return
        try:
            body = response.json()
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        for k, v in body.items():
            if isinstance(v, str) and 0 < len(v) <= 200:
                values = self.known.setdefault(k, [])
                if v not in values:
                    values.append(v)
                    del values[:-MAX_KNOWN_VALUES]


def _check_name(failure: Failure) -> str:
    checks = getattr(failure, "checks", ()) or ()
    return ",".join(checks) if checks else type(failure).__name__


def summary(report: dict[str, Any]) -> str:
    """The report in a few lines: cases, skipped and statuses per operation, then each failure.

    Args:
        report: a :func:`fuzz_api` report.
    """
    lines = [f"fuzz {report['base_url']} seed={report['seed']}: {report['cases']} cases in {report['seconds']} s, "
             f"{len(report['failures'])} failures"]
    for label, s in report["operations"].items():
        statuses = " ".join(f"{k}x{v}" for k, v in s["statuses"].items())
        lines.append(f"  {label:<40} cases={s['cases']:<3} skipped={s['skipped']:<3} uploads={s['uploads']:<2} "
                     f"reused_ids={s['reused_ids']:<2} busy={s['busy']:<2} statuses: {statuses}"
                     + (" (out of time)" if s["out_of_time"] else ""))
    for f in report["failures"]:
        lines.append(f"FAIL {f['operation']} [{f['check']}] status={f['status']}: {f['title']}\n"
                     f"    {f['message'][:800]}\n    request: {f['request'][:600]}")
    for e in report["schema_errors"]:
        lines.append(f"SCHEMA ERROR {e}")
    return "\n".join(lines)


__all__ = ["CHECKS", "fuzz_api", "summary"]

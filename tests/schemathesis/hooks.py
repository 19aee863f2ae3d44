"""Schemathesis hooks for the admin API run by tests/schemathesis/run.

`positive_data_acceptance` (a request the document calls valid must not be refused) is
replaced by `documented_rules_only`, which is the same check with the refusals the document
announces but no JSON schema can state left out:

- 422 `rule_violated` / `limit_exceeded`: rules across fields or against configured limits
  (a semantic proxy needs target models, a fallback names one of the proxy's routes, …);
- 422 `invalid_value` for a reference to something that does not exist (a gateway, a
  semantic service, a consumer's proxy), a regex guard pattern that does not compile, a
  credential or rate-limit key selector that does not parse, a URL the HTTP stack does not
  parse, a rate limit's window longer than 366d, or a key expiry that is not in the future:
  each of these fields says so in its description.

Everything else still fails the run: a 400 (the body's shape or types), and a 422
`invalid_value` on any other field (a name pattern, a length, a secret's characters, a
negative version: the rules the document states and must state truly).
"""
import schemathesis

SELECTOR_HINT = "expected attributes.headers['name'] or attributes.queryParams['name']"


def _announced(field: str, message: str) -> bool:
    if "does not exist" in message:
        return True
    if field.startswith("regex_guard.patterns[") and field.endswith(".pattern"):
        return True
    if SELECTOR_HINT in message:
        return True
    if message.endswith("is not a valid URL"):
        return True
    if field.endswith(".window") and ("at most 366d" in message or "too long" in message):
        return True
    if field == "expires_at" and "must be in the future" in message:
        return True
    return False


@schemathesis.check
def documented_rules_only(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        error = response.json()["error"]
        code, field, message = error["code"], error.get("field", ""), error["message"]
    except (ValueError, KeyError, TypeError) as e:
        raise AssertionError(f"{response.status_code} without the documented error shape: {e}")
    if response.status_code == 400:
        raise AssertionError(f"a schema-valid request was refused as malformed: {field}: {message}")
    if code == "invalid_value" and not _announced(field, message):
        raise AssertionError(
            f"a schema-valid request was refused for a rule the document does not state: {field}: {message}"
        )
    return None

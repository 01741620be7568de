"""Licence policy: classes, the base_model chain, inheritance by fine-tunes, policy-file errors, card parsing."""

from __future__ import annotations

import re

import pytest

from ebru.trust import CardError, LicenseError, PolicyError, load, load_policy, parse_card, parse_policy, verify
from ebru.trust.license import decide


def card(license_line: str, base: str = "null", extra: str = "") -> str:
    return f"---\n{license_line}\nbase_model: {base}\n{extra}---\n# model\n"


def decision(text: str, lineage=(), policy=None, acknowledge=()):
    return decide(parse_card(text, "MODEL_CARD.md"), lineage, policy or load_policy(), "MODEL_CARD.md", acknowledge)


@pytest.mark.parametrize(("line", "cls"), [
    ("license: apache-2.0", "allow"),
    ("license: MIT", "allow"),  # identifiers are case-insensitive
    ("license: bsd-3-clause", "allow"),
    ("license: cc-by-4.0", "allow-with-obligations"),
    ("license: creativeml-openrail-m", "allow-with-obligations"),
    ("license: openrail++", "allow-with-obligations"),
    ("license: bigscience-openrail-m", "allow-with-obligations"),
])
def test_default_policy_allows(line, cls):
    assert decision(card(line)).cls == cls


def test_rail_obligations_name_the_licence():
    d = decision(card("license: creativeml-openrail-m"))
    assert len(d.obligations) == 1  # the facts: which licence, where its restrictions are, who they bind
    assert re.search(r"use-based restrictions of creativeml-openrail-m \(its Attachment A\).*derivative",
                     d.obligations[0]), d.obligations


@pytest.mark.parametrize(("text", "reason"), [
    (card("license: cc-by-nc-4.0"), "licence 'cc-by-nc-4.0' is denied"),
    (card("license: cc-by-nc-sa-4.0"), "licence 'cc-by-nc-sa-4.0' is denied"),
    (card("license: fair-noncommercial-research-license"), "'fair-noncommercial-research-license' is denied"),
    (card("license: intel-research"), "'intel-research' is denied"),
    (card("license: apple-amlr"), "'apple-amlr' is denied"),
    (card("license: other", extra="license_name: flux-1-dev-non-commercial-license\nlicense_link: LICENSE.md\n"),
     "'flux-1-dev-non-commercial-license' is denied"),
    (card("license: wtfpl"), "licence 'wtfpl' is denied .*not in the policy"),
    (card("license: unknown"), "licence 'unknown' is denied .*no licence given"),
    ("---\nbase_model: null\n---\n", r"licence '\(none\)' is denied .*no licence given"),
    (card("license: other"), "'other' without license_name"),
    (card("license: other", extra="license_name: acme-licence\n"), "'other' without license_link"),
])
def test_default_policy_denies(text, reason):
    with pytest.raises(LicenseError) as e:
        decision(text)
    assert re.search(reason, str(e.value)) and str(e.value).startswith("MODEL_CARD.md: ")


def test_needs_acknowledgement():
    with pytest.raises(LicenseError, match=r"'llama3' needs an acknowledgement.*'acknowledged'"):
        decision(card("license: llama3"))
    assert decision(card("license: llama3"), acknowledge=["llama3"]).acknowledged == ("llama3",)
    policy = parse_policy('acknowledged = ["llama3", "gemma"]\n[licenses]\nllama3 = "needs-acknowledgement"\n', "p")
    d = decision(card("license: llama3"), policy=policy)
    assert (d.cls, d.acknowledged) == ("needs-acknowledgement", ("llama3",))


def test_the_strictest_licence_on_the_chain_decides():
    lineage = [
        {"name": "org/ft", "license": "creativeml-openrail-m", "base_model": ["org/base"]},
        {"name": "org/base", "license": "cc-by-nc-4.0", "base_model": []},
    ]
    with pytest.raises(LicenseError, match=r"licence 'cc-by-nc-4.0' of base model 'org/base' is denied"):
        decision(card("license: mit", base="org/ft"), lineage)
    lineage[1]["license"] = "apache-2.0"
    d = decision(card("license: mit", base="org/ft"), lineage)
    assert d.cls == "allow-with-obligations"  # the fine-tune's MIT does not wash away its base's RAIL terms
    assert [(f.model, f.license, f.cls) for f in d.findings] == [
        ("this model", "mit", "allow"), ("org/ft", "creativeml-openrail-m", "allow-with-obligations"),
        ("org/base", "apache-2.0", "allow")]
    assert "creativeml-openrail-m" in d.obligations[0]


def test_merges_list_several_bases_and_unknown_bases_are_denied():
    lineage = [{"name": "a", "license": "mit"}]
    with pytest.raises(LicenseError, match=r"'\(unknown\)' of base model 'b' is denied .*lineage.*\[base_models\]"):
        decision(card("license: mit", base="[a, b]"), lineage)
    policy = parse_policy('[base_models]\n"b" = { license = "apache-2.0" }\n[licenses]\nmit = "allow"\n'
                          '"apache-2.0" = "allow"\n', "p")
    assert decision(card("license: mit", base="[a, b]"), lineage, policy).cls == "allow"


def test_policy_base_models_form_chains_and_cycles_end():
    policy = parse_policy('[licenses]\nmit = "allow"\n"openrail" = "allow-with-obligations"\n'
                          '[base_models]\n"x" = { license = "mit", base_model = "y" }\n'
                          '"y" = { license = "openrail", base_model = ["x"] }\n', "p")
    d = decision(card("license: mit", base="x"), policy=policy)
    assert [f.model for f in d.findings] == ["this model", "x", "y"] and d.cls == "allow-with-obligations"


def test_policy_can_allow_unknown_and_patterns_take_the_strictest():
    policy = parse_policy('unknown = "allow"\n[licenses]\n"acme-*" = "allow"\n"*-nc" = "deny"\n', "p")
    assert decision(card("license: whatever"), policy=policy).cls == "allow"
    with pytest.raises(LicenseError, match=r"'acme-nc' is denied"):
        decision(card("license: acme-nc"), policy=policy)
    exact = parse_policy('[licenses]\n"*-nc" = "deny"\n"acme-nc" = "allow"\n', "p")
    assert decision(card("license: acme-nc"), policy=exact).cls == "allow"  # an exact entry wins


@pytest.mark.parametrize(("text", "reason"), [
    ('[licenses]\nmit = "permit"\n', "licenses.'mit': unknown class 'permit' .*allow, allow-with-obligations, "
                                     "needs-acknowledgement, deny"),
    ('unknown = "maybe"\n', "unknown: unknown class 'maybe'"),
    ('[licenses]\nmit = { class = "allow", notes = "x" }\n', "unknown key 'notes'"),
    ('[licenses]\nmit = { class = "allow", obligations = "x" }\n', "obligations must be a list of strings"),
    ('licences = {}\n', "unknown key 'licences'"),
    ('acknowledged = "llama3"\n', "acknowledged must be a list"),
    ('[base_models]\nx = { licence = "mit" }\n', "base_models.'x': unknown key 'licence'"),
    ("[licenses\n", "not valid TOML"),
])
def test_bad_policy_files_one_line_each(tmp_path, text, reason):
    p = tmp_path / "policy.toml"
    p.write_text(text)
    with pytest.raises(PolicyError) as e:
        load_policy(p)
    assert re.search(reason, str(e.value)) and str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_policy_file_locations(tmp_path, monkeypatch):
    with pytest.raises(PolicyError, match=r"licence policy file not found"):
        load_policy(tmp_path / "none.toml")
    assert load_policy().source == "<built-in licence policy>"
    user = tmp_path / "xdg-config" / "ebru" / "license_policy.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[licenses]\nmit = "deny"\n')
    assert load_policy().source == str(user)
    env = tmp_path / "env.toml"
    env.write_text('[licenses]\nmit = "allow"\n')
    monkeypatch.setenv("EBRU_LICENSE_POLICY", str(env))
    assert load_policy().source == str(env)


def test_fine_tuned_package_inherits_base_licence_and_obligations(make_package, keys):
    base = make_package("base", card=card("license: creativeml-openrail-m"), sign_key=keys.ec)
    loaded = load(base, trusted_keys=keys.trusted)
    lineage = loaded.lineage_entry("org/sd-base")
    assert lineage[0]["manifest_sha256"] == loaded.manifest_sha256
    ft = make_package("ft", card=card("license: mit", base="org/sd-base"), lineage=lineage, sign_key=keys.ec)
    m = load(ft, trusted_keys=keys.trusted)
    assert m.license.cls == "allow-with-obligations"
    assert m.license.obligations == loaded.license.obligations
    # The lineage is in the signed manifest: it cannot be edited away without breaking the signature.
    assert m.manifest.lineage[0]["license"] == "creativeml-openrail-m"
    # A fine-tune of the fine-tune inherits both links.
    ft2 = make_package("ft2", card=card("license: apache-2.0", base="me/ft"), lineage=m.lineage_entry("me/ft"))
    assert [f.model for f in verify(ft2).license.findings] == ["this model", "me/ft", "org/sd-base"]


def test_metadata_licence_must_agree_with_the_card(make_package):
    pkg = make_package(metadata={"modelspec.license": "cc-by-nc-4.0"})
    with pytest.raises(LicenseError) as e:
        load(pkg)
    assert e.value.path.endswith("model.safetensors")
    assert re.search(r"modelspec\.license 'cc-by-nc-4.0' disagrees .*'mit'", e.value.reason), e.value.reason
    assert load(make_package("ok", metadata={"modelspec.license": "MIT"})).license.cls == "allow"


@pytest.mark.parametrize(("text", "reason"), [
    ("# no front matter\n", "has no YAML front matter"),
    ("---\nlicense: mit\n", "front matter is not closed"),
    ("---\nlicense: mit\nlicense: cc-by-nc-4.0\n---\n", "duplicate key 'license'"),
    ("---\nbase: &b mit\nlicense: *b\n---\n", "anchors are not allowed"),
    ("---\nlicense: no\n---\n", "license must be a string, got False"),
    ("---\nlicense: mit\nbase_model: {a: 1}\n---\n", "base_model must be a name or a list of names"),
    ("---\n- a\n- b\n---\n", "front matter is not a YAML mapping"),
    ("---\nlicense: [mit\n---\n", "front matter is not valid YAML"),
    (b"---\nlicense: \xff\n---\n", "is not valid UTF-8"),
    ("---\n? [a, b]\n: c\nlicense: mit\n---\n", "a mapping key must be a plain value"),
])
def test_bad_cards_one_line_each(text, reason):
    with pytest.raises(CardError) as e:
        parse_card(text, "MODEL_CARD.md")
    assert reason in str(e.value) and "\n" not in str(e.value)


def test_card_fields():
    c = parse_card("---\nlicense: Apache-2.0\nbase_model:\n  - a/b\n  - c/d\ndatasets: mnist\n"
                   "intended_use: research\n---\n# text\n", "x")
    assert (c.license, c.base_model, c.datasets, c.intended_use) == ("apache-2.0", ("a/b", "c/d"), ("mnist",),
                                                                     "research")

"""Licence policy: a TOML file that classes licences, and the walk along the ``base_model`` chain.

Classes, from least to most strict::

    allow                    load
    allow-with-obligations   load; the licence's obligations (e.g. RAIL use restrictions) are
                             recorded and passed on to derivatives
    needs-acknowledgement    load only if the policy's ``acknowledged`` list (or the caller) names it
    deny                     refuse

A policy file::

    unknown = "deny"               # class for unlisted licences, a missing licence, "unknown", and
                                   # "other" without license_name/license_link
    acknowledged = ["llama3"]      # needs-acknowledgement licences this organisation has accepted

    [licenses]                     # HF identifiers (lower case), license_name slugs, or glob patterns
    "apache-2.0" = "allow"
    "creativeml-openrail-m" = { class = "allow-with-obligations", obligations = ["…"] }
    "cc-by-nc-*" = "deny"

    [base_models]                  # licences of base models known here but not shipped as packages
    "org/base-model" = { license = "creativeml-openrail-m", base_model = [] }

Lookup: an exact entry wins; otherwise the *strictest* class among matching patterns. For
``license: other`` the ``license_name`` is looked up instead. The decision for a model is the
strictest class anywhere along its chain: the model's own card, then every ``base_model`` named
in it, recursively. Each base is found in the package's signed ``lineage`` (written when the
package was made from a verified base package), else in the policy's ``[base_models]``; a base
found in neither has an unknown licence. Obligations of every licence on the chain are carried
by the decision, so a fine-tuned package inherits its base's.

The built-in policy (:data:`DEFAULT_POLICY_TOML`) allows apache-2.0, MIT, BSD, CC0, CC-BY (with
attribution), the OpenRAIL family with its use restrictions as obligations; asks for an
acknowledgement for Llama, Gemma, DeepFloyd IF and Stability community licences; and denies
non-commercial and research-only licences.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .card import ModelCard
from .errors import LicenseError, PolicyError

CLASSES = ("allow", "allow-with-obligations", "needs-acknowledgement", "deny")
_RANK = {c: i for i, c in enumerate(CLASSES)}

_RAIL = ("use-based restrictions of {license} (its Attachment A) apply to this model, its outputs' use "
         "and every derivative; pass them on to derivatives and users")

DEFAULT_POLICY_TOML = f"""\
# ebru's built-in licence policy. Copy it to ~/.config/ebru/license_policy.toml (or point
# EBRU_LICENSE_POLICY at a copy) to change it.
unknown = "deny"
acknowledged = []

[licenses]
"apache-2.0" = "allow"
"mit" = "allow"
"bsd-2-clause" = "allow"
"bsd-3-clause" = "allow"
"cc0-1.0" = "allow"
"openmdw-*" = "allow"
"cc-by-4.0" = {{ class = "allow-with-obligations", obligations = ["attribute the licensor (CC BY 4.0)"] }}
"openrail" = {{ class = "allow-with-obligations", obligations = ["{_RAIL}"] }}
"openrail++" = {{ class = "allow-with-obligations", obligations = ["{_RAIL}"] }}
"creativeml-openrail-m" = {{ class = "allow-with-obligations", obligations = ["{_RAIL}"] }}
"bigscience-openrail-m" = {{ class = "allow-with-obligations", obligations = ["{_RAIL}"] }}
"bigcode-openrail-m" = {{ class = "allow-with-obligations", obligations = ["{_RAIL}"] }}
"llama2" = "needs-acknowledgement"
"llama3*" = "needs-acknowledgement"
"llama4" = "needs-acknowledgement"
"gemma" = "needs-acknowledgement"
"deepfloyd-if-license" = "needs-acknowledgement"
"stabilityai-*community*" = "needs-acknowledgement"
"cc-by-nc-*" = "deny"
"*noncommercial*" = "deny"
"*non-commercial*" = "deny"
"*-research" = "deny"
"*research-license*" = "deny"
"*research-only*" = "deny"
"apple-amlr" = "deny"
"""


@dataclass(frozen=True)
class Rule:
    cls: str
    obligations: tuple[str, ...] = ()


@dataclass(frozen=True)
class BaseModelInfo:
    license: str | None
    license_name: str | None = None
    license_link: str | None = None
    base_model: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    exact: dict[str, Rule]
    patterns: tuple[tuple[str, Rule], ...]
    unknown: Rule
    acknowledged: frozenset[str]
    base_models: dict[str, BaseModelInfo]
    source: str

    def rule(self, licence: str) -> Rule | None:
        if licence in self.exact:
            return self.exact[licence]
        matches = [r for pattern, r in self.patterns if fnmatch.fnmatchcase(licence, pattern)]
        return max(matches, key=lambda r: _RANK[r.cls]) if matches else None


def _rule(value: Any, where: str, path: str) -> Rule:
    if isinstance(value, str):
        value = {"class": value}
    if not isinstance(value, dict):
        raise PolicyError(path, f"{where}: expected a class name or {{ class = ..., obligations = [...] }}")
    unknown = sorted(value.keys() - {"class", "obligations"})
    if unknown:
        raise PolicyError(path, f"{where}: unknown key {unknown[0]!r} (expected class, obligations)")
    cls = value.get("class")
    if cls not in CLASSES:
        raise PolicyError(path, f"{where}: unknown class {cls!r} (expected one of {', '.join(CLASSES)})")
    obligations = value.get("obligations", [])
    if not isinstance(obligations, list) or not all(isinstance(o, str) for o in obligations):
        raise PolicyError(path, f"{where}: obligations must be a list of strings")
    return Rule(cls, tuple(obligations))


def _base_model(name: str, value: Any, path: str) -> BaseModelInfo:
    if isinstance(value, str):
        value = {"license": value}
    if not isinstance(value, dict):
        raise PolicyError(path, f"base_models.{name!r}: expected a licence or a table with license = ...")
    allowed = {"license", "license_name", "license_link", "base_model"}
    unknown = sorted(value.keys() - allowed)
    if unknown:
        raise PolicyError(path, f"base_models.{name!r}: unknown key {unknown[0]!r} "
                                f"(expected {', '.join(sorted(allowed))})")
    bases = value.get("base_model", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise PolicyError(path, f"base_models.{name!r}: base_model must be a name or a list of names")
    for key in ("license", "license_name", "license_link"):
        if key in value and not isinstance(value[key], str):
            raise PolicyError(path, f"base_models.{name!r}: {key} must be a string")
    lic = value.get("license")
    return BaseModelInfo(lic.lower() if lic else None, value.get("license_name"), value.get("license_link"),
                         tuple(bases))


def parse_policy(text: str, source: str) -> Policy:
    """Parse a policy document; unknown keys and classes are errors naming ``source``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(source, f"not valid TOML ({e})") from None
    unknown = sorted(doc.keys() - {"unknown", "acknowledged", "licenses", "base_models"})
    if unknown:
        raise PolicyError(source, f"unknown key {unknown[0]!r} (expected unknown, acknowledged, licenses, base_models)")
    licenses = doc.get("licenses", {})
    if not isinstance(licenses, dict):
        raise PolicyError(source, "[licenses] must be a table")
    exact, patterns = {}, []
    for name, value in licenses.items():
        rule = _rule(value, f"licenses.{name!r}", source)
        key = name.strip().lower()
        if any(c in key for c in "*?["):
            patterns.append((key, rule))
        else:
            exact[key] = rule
    acknowledged = doc.get("acknowledged", [])
    if not isinstance(acknowledged, list) or not all(isinstance(a, str) for a in acknowledged):
        raise PolicyError(source, "acknowledged must be a list of licence identifiers")
    bases = doc.get("base_models", {})
    if not isinstance(bases, dict):
        raise PolicyError(source, "[base_models] must be a table")
    return Policy(exact, tuple(patterns), _rule(doc.get("unknown", "deny"), "unknown", source),
                  frozenset(a.lower() for a in acknowledged),
                  {name: _base_model(name, v, source) for name, v in bases.items()}, source)


def load_policy(policy: Policy | str | os.PathLike | None = None) -> Policy:
    """The policy in force: the argument, else EBRU_LICENSE_POLICY, else the user's file, else the built-in."""
    if isinstance(policy, Policy):
        return policy
    path = Path(policy) if policy is not None else settings.env_path(settings.ENV_POLICY)
    if path is None and settings.default_policy_path().is_file():
        path = settings.default_policy_path()
    if path is None:
        return parse_policy(DEFAULT_POLICY_TOML, "<built-in licence policy>")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(path, "licence policy file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(path, f"cannot read the licence policy ({e})") from None
    return parse_policy(text, str(path))


def check_output_license(licence: str, policy: Policy | str | os.PathLike | None = None) -> str:
    """The policy's class for ``licence`` as a model ebru is about to *write* would carry it (no base models).

    For a training run, before it starts: a model whose card names a licence the policy denies (or does not
    know, with ``unknown = "deny"``) could never be loaded here, so the run would be wasted. Returns the class
    (``allow``, ``allow-with-obligations`` or ``needs-acknowledgement``). Raises ValueError (one line) for a
    licence the policy denies or does not know, naming the policy; :class:`PolicyError` for a broken policy file.
    """
    pol = load_policy(policy)
    lic = str(licence).strip().lower()
    rule = pol.rule(lic)
    cls = (rule or pol.unknown).cls
    if cls == "deny":
        why = "is denied by" if rule is not None else "is not in"
        raise ValueError(f"license {licence!r} {why} the licence policy ({pol.source}), so the model this run "
                         "would write could not be loaded here: pick one the policy allows, e.g. --set "
                         "license=apache-2.0")
    return cls


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Finding:
    """One model on the chain: its name, the licence looked up, and the class it got."""

    model: str
    license: str
    cls: str
    why: str = ""


@dataclass(frozen=True)
class LicenseDecision:
    cls: str
    findings: tuple[Finding, ...]
    obligations: tuple[str, ...] = ()
    acknowledged: tuple[str, ...] = field(default=())

    @property
    def decisive(self) -> Finding:
        return max(self.findings, key=lambda f: _RANK[f.cls])

    def summary(self) -> str:
        chain = " <- ".join(f"{f.license} ({f.model})" if f.model != "this model" else f.license
                            for f in self.findings)
        return f"{self.cls}: {chain}"

    def to_json(self) -> dict[str, Any]:
        chain = [{"model": f.model, "license": f.license, "class": f.cls, "why": f.why} for f in self.findings]
        return {"class": self.cls, "chain": chain, "obligations": list(self.obligations),
                "acknowledged": list(self.acknowledged)}


def _lookup(model: str, info: BaseModelInfo, policy: Policy) -> tuple[Finding, Rule]:
    lic = info.license
    if not lic or lic == "unknown":
        return Finding(model, lic or "(none)", policy.unknown.cls, "no licence given"), policy.unknown
    if lic == "other":
        if not info.license_name or not info.license_link:
            missing = "license_name" if not info.license_name else "license_link"
            return (Finding(model, "other", policy.unknown.cls, f"license is 'other' without {missing}"),
                    policy.unknown)
        lic = info.license_name.strip().lower()
    rule = policy.rule(lic)
    if rule is None:
        return Finding(model, lic, policy.unknown.cls, f"not in the policy ({policy.source})"), policy.unknown
    return Finding(model, lic, rule.cls), rule


def decide(card: ModelCard, lineage: tuple[dict[str, Any], ...] | list[dict[str, Any]], policy: Policy,
           path: str | os.PathLike, acknowledge: tuple[str, ...] | list[str] = ()) -> LicenseDecision:
    """The decision for a package, or :class:`LicenseError` naming ``path`` (the card) and the reason."""
    known = {e["name"]: BaseModelInfo(
        (e.get("license") or "").lower() or None, e.get("license_name"), e.get("license_link"),
        tuple(e.get("base_model") or ())) for e in lineage}
    acknowledged = policy.acknowledged | {a.lower() for a in acknowledge}
    findings: list[Finding] = []
    obligations: list[str] = []
    todo = [("this model", BaseModelInfo(card.license, card.license_name, card.license_link, card.base_model))]
    seen: set[str] = set()
    while todo:
        model, info = todo.pop(0)
        finding, rule = _lookup(model, info, policy)
        findings.append(finding)
        for o in rule.obligations:
            text = o.replace("{license}", finding.license)
            if text not in obligations:
                obligations.append(text)
        for base in info.base_model:
            if base in seen:
                continue
            seen.add(base)
            if len(seen) > 256:
                raise LicenseError(path, "base_model chain is longer than 256 models")
            if base in known:
                todo.append((base, known[base]))
            elif base in policy.base_models:
                todo.append((base, policy.base_models[base]))
            else:
                findings.append(Finding(base, "(unknown)", policy.unknown.cls,
                                        "base model not in the package lineage nor the policy's [base_models]"))
    decision = LicenseDecision(max((f.cls for f in findings), key=_RANK.__getitem__), tuple(findings),
                               tuple(obligations))
    worst = decision.decisive
    who = "" if worst.model == "this model" else f" of base model {worst.model!r}"
    why = f" ({worst.why})" if worst.why else ""
    if decision.cls == "deny":
        raise LicenseError(path, f"licence {worst.license!r}{who} is denied by the licence policy{why}")
    if decision.cls == "needs-acknowledgement":
        pending = [f for f in findings if f.cls == "needs-acknowledgement" and f.license not in acknowledged]
        if pending:
            f = pending[0]
            who = "" if f.model == "this model" else f" of base model {f.model!r}"
            raise LicenseError(path, f"licence {f.license!r}{who} needs an acknowledgement: add it to "
                                     f"'acknowledged' in the licence policy ({policy.source})")
        return LicenseDecision(decision.cls, decision.findings, decision.obligations,
                               tuple(sorted({f.license for f in findings if f.cls == "needs-acknowledgement"})))
    return decision

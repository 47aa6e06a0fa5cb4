"""API clients with claim sets, and the ODS/API's authorization strategies over the sandbox's data.

What each claim set grants and which strategy authorizes each action follows the security metadata of the
ODS/API (``0002-ResourceClaimMetadata.xml`` of the DS 5.2.0 artifacts, Ed-Fi-ODS v7.3.2); the relationships
follow the ``auth.EducationOrganizationIdTo*`` views. See ``docs/authorization.md``.

The store answers reads through an :class:`AuthFilter` (an SQL condition over the ``doc`` column of a resource's
table, or over ``old_key`` of its tracked changes); the app checks writes and by-id reads with
:meth:`ClientScope.check_item`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from edfi_core.openapi import ApiModel, Resource, value_at

SANDBOX = "Ed-Fi Sandbox"
SIS_VENDOR = "SIS Vendor"
DISTRICT_HOSTED = "District Hosted SIS Vendor"
CLAIM_SETS = (SANDBOX, SIS_VENDOR, DISTRICT_HOSTED)

NO_FURTHER = "NoFurtherAuthorizationRequired"
RELATIONSHIPS = "RelationshipsWithEdOrgsAndPeople"
EDORGS_ONLY = "RelationshipsWithEdOrgsOnly"
STUDENTS_ONLY = "RelationshipsWithStudentsOnly"
NAMESPACE = "NamespaceBased"
ACTIONS = ("Create", "Read", "Update", "Delete")
READ_CHANGES = "ReadChanges"
#: the action URIs the claim checks name (EdFi_Security Actions table: 0001-ResourceClaimMetadata.sql)
ACTION_URIS = {"Create": "http://ed-fi.org/odsapi/actions/create", "Read": "http://ed-fi.org/odsapi/actions/read",
               "Update": "http://ed-fi.org/odsapi/actions/update", "Delete": "http://ed-fi.org/odsapi/actions/delete",
               READ_CHANGES: "http://ed-fi.org/odsapi/actions/readChanges"}

#: education organization resources and the identifier each is keyed by
EDORG_RESOURCES = {
    "schools": "schoolId", "localEducationAgencies": "localEducationAgencyId",
    "stateEducationAgencies": "stateEducationAgencyId", "educationServiceCenters": "educationServiceCenterId",
    "postSecondaryInstitutions": "postSecondaryInstitutionId", "communityOrganizations": "communityOrganizationId",
    "communityProviders": "communityProviderId", "educationOrganizationNetworks": "educationOrganizationNetworkId",
    "organizationDepartments": "organizationDepartmentId",
}
EDORG_KEYS = frozenset({"educationOrganizationId", *EDORG_RESOURCES.values()})
PEOPLE = {"students": "studentUniqueId", "staffs": "staffUniqueId", "contacts": "contactUniqueId",
          "parents": "parentUniqueId"}
PERSON_KEYS = frozenset(PEOPLE.values())
PRIMARY_RELATIONSHIPS = frozenset({"studentSchoolAssociations", "staffEducationOrganizationAssignmentAssociations",
                                   "staffEducationOrganizationEmploymentAssociations"})
MANAGED_DESCRIPTORS = frozenset({"accommodationDescriptors", "assessmentPeriodDescriptors",
                                 "assessmentReportingMethodDescriptors", "performanceLevelDescriptors"})
ASSESSMENT_METADATA = frozenset({"assessments", "assessmentItems", "objectiveAssessments", "studentAssessments",
                                 "assessmentScoreRangeLearningStandards"})
EDUCATION_STANDARDS = frozenset({"learningStandards", "learningStandardEquivalenceAssociations"})
SURVEY_DOMAIN = frozenset({"surveys", "surveyQuestions", "surveyQuestionResponses", "surveyResponses",
                           "surveySections", "surveySectionResponses"})
#: the view whose failure the 7.3 detail hints at, by the person key
HINTS = {"studentUniqueId": "You may need to create a corresponding 'StudentSchoolAssociation' item.",
         "contactUniqueId": "You may need to create corresponding 'StudentSchoolAssociation' and"
                            " 'StudentContactAssociation' items.",
         "parentUniqueId": "You may need to create corresponding 'StudentSchoolAssociation' and"
                           " 'StudentParentAssociation' items.",
         "staffUniqueId": "You may need to create corresponding 'StaffEducationOrganizationEmploymentAssociation'"
                          " or 'StaffEducationOrganizationAssignmentAssociation' items."}


@dataclass(frozen=True)
class ClientSpec:
    """One API client: ``ID:SECRET:CLAIMSET[:EDORG,...][:NAMESPACE]``; ``CLAIMSET+ReadChanges`` is the claim set
    with the ReadChanges action added wherever it grants Read (as an administrator does in a copy of it)."""

    client_id: str
    secret: str
    claim_set: str = SANDBOX
    education_organizations: tuple[int, ...] = ()
    namespaces: tuple[str, ...] = ("uri://ed-fi.org",)
    read_changes: bool = False

    @classmethod
    def parse(cls, text: str) -> ClientSpec:
        parts = text.split(":", 3)
        if len(parts) < 3 or not parts[0] or not parts[1]:
            raise ValueError(f"--client wants ID:SECRET:CLAIMSET[:EDORG,...][:NAMESPACE], not {text.split(':')[0]}:...")
        cid, secret, claim_set = parts[:3]
        read_changes = claim_set.lower().endswith("+readchanges")
        claim_set = canonical_claim_set(claim_set[: -len("+readchanges")] if read_changes else claim_set)
        rest = parts[3] if len(parts) > 3 else ""
        edorgs: tuple[int, ...] = ()
        namespaces: tuple[str, ...] = ("uri://ed-fi.org",)
        if rest:
            head, sep, tail = rest.partition(":")
            if head.replace(",", "").strip().isdigit():
                edorgs = tuple(int(v) for v in head.split(",") if v.strip())
                rest = tail if sep else ""
            if rest:
                namespaces = tuple(n for n in rest.split(",") if n)
        return cls(cid, secret, claim_set, edorgs, namespaces, read_changes)


def canonical_claim_set(name: str) -> str:
    for known in CLAIM_SETS:
        if name.strip().lower() in (known.lower(), known.lower().replace(" ", "-"), known.lower().replace(" ", "")):
            return known
    if name.strip().lower() == "sandbox":
        return SANDBOX
    raise ValueError(f"unknown claim set {name!r}: use one of {', '.join(CLAIM_SETS)}")


# -- what a claim set grants -------------------------------------------------------------------------
def domain_of(res: Resource) -> str:
    """The resource claim domain the security metadata puts the resource under."""
    name = res.name
    if res.is_descriptor:
        return "managedDescriptors" if name in MANAGED_DESCRIPTORS else "systemDescriptors"
    if name == "schoolYearTypes":
        return "edFiTypes"
    if name in EDORG_RESOURCES:
        return "educationOrganizations"
    if name in PEOPLE:
        return "people"
    if name in PRIMARY_RELATIONSHIPS:
        return "primaryRelationships"
    if name in ASSESSMENT_METADATA:
        return "assessmentMetadata"
    if name in EDUCATION_STANDARDS:
        return "educationStandards"
    if name in SURVEY_DOMAIN:
        return "surveyDomain"
    if name == "educationContents":
        return "educationContent"
    return "relationshipBasedData"


#: default strategies of each domain, per action (the security metadata's DefaultAuthorization)
DEFAULTS: dict[str, dict[str, str]] = {
    "edFiTypes": {"Read": NO_FURTHER},
    "systemDescriptors": {"Create": NAMESPACE, "Read": NO_FURTHER, "Update": NAMESPACE, "Delete": NAMESPACE},
    "managedDescriptors": {"Create": NAMESPACE, "Read": NO_FURTHER, "Update": NAMESPACE, "Delete": NAMESPACE},
    "educationOrganizations": dict.fromkeys(ACTIONS, NO_FURTHER),
    "people": {"Create": NO_FURTHER, "Read": RELATIONSHIPS, "Update": RELATIONSHIPS, "Delete": NO_FURTHER},
    "relationshipBasedData": dict.fromkeys(ACTIONS, RELATIONSHIPS),
    "assessmentMetadata": dict.fromkeys(ACTIONS, NAMESPACE),
    "educationStandards": {"Create": NAMESPACE, "Read": NO_FURTHER, "Update": NAMESPACE, "Delete": NAMESPACE},
    "primaryRelationships": {"Create": EDORGS_ONLY, "Read": RELATIONSHIPS, "Update": RELATIONSHIPS,
                             "Delete": RELATIONSHIPS},
    "surveyDomain": dict.fromkeys(ACTIONS, NAMESPACE),
    "educationContent": dict.fromkeys(ACTIONS, NAMESPACE),
}
ALL = frozenset(ACTIONS)
#: actions each claim set has on each domain (absent: the claim set has no claim for it)
GRANTS: dict[str, dict[str, frozenset[str]]] = {
    SIS_VENDOR: {"edFiTypes": frozenset({"Read"}), "systemDescriptors": frozenset({"Read"}),
                 "managedDescriptors": ALL, "educationOrganizations": frozenset({"Read"}), "people": ALL,
                 "relationshipBasedData": ALL, "assessmentMetadata": ALL, "educationStandards": ALL,
                 "primaryRelationships": ALL, "educationContent": ALL},
    DISTRICT_HOSTED: {"edFiTypes": frozenset({"Read"}), "systemDescriptors": frozenset({"Read"}),
                      "managedDescriptors": ALL, "educationOrganizations": frozenset({"Read"}), "people": ALL,
                      "relationshipBasedData": ALL, "assessmentMetadata": ALL, "educationStandards": ALL,
                      "primaryRelationships": ALL, "educationContent": ALL},
}
#: per-resource overrides of a claim set's actions (District Hosted SIS Vendor on localEducationAgency, school)
RESOURCE_GRANTS: dict[str, dict[str, frozenset[str]]] = {
    DISTRICT_HOSTED: {"localEducationAgencies": frozenset({"Read", "Update"}), "schools": ALL,
                      "organizationDepartments": ALL},
}
#: per-resource strategy overrides (the security metadata's claims below a domain)
RESOURCE_STRATEGIES: dict[str, dict[str, str]] = {
    "courses": {"Read": NO_FURTHER},
    "organizationDepartments": dict.fromkeys(ACTIONS, RELATIONSHIPS),
    # 2160-StudentContactAssociation-authorized-on-StudentOnly.xml (and 2150-StudentParentAssociation-... on DS 4)
    "studentContactAssociations": dict.fromkeys(ACTIONS, STUDENTS_ONLY),
    "studentParentAssociations": dict.fromkeys(ACTIONS, STUDENTS_ONLY),
}


class AuthorizationDenied(Exception):
    """A 403: ``detail``/``message`` as the version words it, ``errors`` (7.x problem details), ``kind``."""

    def __init__(self, kind: str, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.errors = kind, message, errors


#: a store hook: (reader connection, tracked) -> SQL condition over ``doc`` (or ``old_key``) and its arguments
AuthFilter = Callable[[sqlite3.Connection, bool], tuple[str, list[Any]]]


@dataclass
class ClientScope:
    """What one client may do, answered over the store's data."""

    spec: ClientSpec
    model: ApiModel
    tables: dict[str, str]
    api_version: str
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def _cache(self) -> dict:
        """Sets computed for the request at hand (per thread: requests run in a pool)."""
        if not hasattr(self._local, "cache"):
            self._local.cache = {}
        return self._local.cache

    @property
    def unrestricted(self) -> bool:
        return self.spec.claim_set == SANDBOX

    # -- claims ----------------------------------------------------------------------------------
    def strategy(self, res: Resource, action: str) -> str:
        """The strategy that authorizes ``action`` on ``res``; raises :class:`AuthorizationDenied` when the
        claim set has no claim for the resource or not for the action."""
        if self.unrestricted:
            return NO_FURTHER
        domain = domain_of(res)
        granted = RESOURCE_GRANTS.get(self.spec.claim_set, {}).get(res.name)
        if granted is None:
            granted = GRANTS.get(self.spec.claim_set, {}).get(domain)
        lineage = [f"http://ed-fi.org/ods/identity/claims/{res.entity}",
                   f"http://ed-fi.org/ods/identity/claims/domains/{domain}"]
        if not granted:
            raise self._claim_denied(res, action, lineage, resource_level=True)
        asked = action
        # 6.1's ReadChanges bit value is 0x16, which Read (0x2) satisfies; 7.x's is 0x10, which it does not
        # (AuthorizationBasisMetadataSelector.cs v6.1, v7.1; ActionBitValueProvider.cs v7.3.2); 5.3 has no
        # ReadChanges action
        if action == READ_CHANGES and (self.api_version < "7" or (self.spec.read_changes and "Read" in granted)):
            asked = "Read"
        if asked not in granted:
            raise self._claim_denied(res, action, lineage, resource_level=False)
        read = "Read" if action == READ_CHANGES else action
        return RESOURCE_STRATEGIES.get(res.name, {}).get(read) or DEFAULTS[domain].get(read, NO_FURTHER)

    def _claim_denied(self, res: Resource, action: str, lineage: list[str], *, resource_level: bool) -> Exception:
        cs = self.spec.claim_set
        names = "', '".join(lineage)
        action = ACTION_URIS.get(action, action)
        if self.api_version >= "7.2":  # ClaimSetRequestEvaluator (7.3.2)
            if resource_level:
                return AuthorizationDenied(
                    "security:authorization:access-denied:resource",
                    "Access to the requested data could not be authorized. You do not have permissions to access"
                    " this data.",
                    [f"The API client's assigned claim set (currently '{cs}') must include one of the following"
                     f" resource claims to provide access to this resource: '{names}'."])
            return AuthorizationDenied(
                "security:authorization:access-denied:action",
                "Access to the requested data could not be authorized. You do not have permissions to perform the"
                " requested operation on the data.",
                [f"The API client's assigned claim set (currently '{cs}') must grant permission of the '{action}'"
                 f" action on one of the following resource claims: '{names}'."])
        if resource_level:  # AuthorizationBasisMetadataSelector (6.1, 7.1); EdFiAuthorizationProvider (5.3)
            claims = "\n    ".join(lineage)
            return AuthorizationDenied(
                "security:authorization",
                "Access to the resource could not be authorized. Are you missing a claim? This resource can be"
                f" authorized by the following claims:\n    {claims}\nThe API client has been assigned the '{cs}'"
                " claim set with the following resource claims:\n    ")
        return AuthorizationDenied(
            "security:authorization",
            f"Access to the resource could not be authorized for the requested action '{action}'.")

    # -- relationships ---------------------------------------------------------------------------
    def _subjects(self, res: Resource, strategy: str) -> list[str]:
        """The natural-key properties the relationship strategies check, in key order."""
        if strategy == STUDENTS_ONLY:
            return [n for n in res.key_paths if n == "studentUniqueId"]
        names = []
        for name in res.key_paths:
            if name in EDORG_KEYS or (strategy == RELATIONSHIPS and name in PERSON_KEYS):
                names.append(name)
        return names

    def edorgs(self, conn: sqlite3.Connection) -> set[int]:
        """The claim's education organizations and every one below them (SEA -> LEA -> school)."""
        key = ("edorgs", id(conn))
        if key in self._cache:
            return self._cache[key]
        found = set(self.spec.education_organizations)
        parents: list[tuple[int, int]] = []  # (child, parent)
        for path, child_key, ref in (("/ed-fi/schools", "schoolId", "localEducationAgencyReference"),
                                     ("/ed-fi/localEducationAgencies", "localEducationAgencyId",
                                      "stateEducationAgencyReference"),
                                     ("/ed-fi/localEducationAgencies", "localEducationAgencyId",
                                      "educationServiceCenterReference")):
            table = self.tables.get(path)
            if table is None:
                continue
            parent_key = {"localEducationAgencyReference": "localEducationAgencyId",
                          "stateEducationAgencyReference": "stateEducationAgencyId",
                          "educationServiceCenterReference": "educationServiceCenterId"}[ref]
            parents += conn.execute(
                f"SELECT json_extract(doc, '$.{child_key}'), json_extract(doc, '$.{ref}.{parent_key}')"
                f' FROM "{table}" WHERE json_extract(doc, \'$.{ref}.{parent_key}\') IS NOT NULL').fetchall()
        changed = True
        while changed:
            changed = False
            for child, parent in parents:
                if parent in found and child not in found:
                    found.add(child)
                    changed = True
        self._cache[key] = found
        return found

    def _assoc_values(self, conn: sqlite3.Connection, path: str, value: str, edorg: str,
                      including_deletes: bool) -> set[Any]:
        """Values of ``value`` in the associations at ``path`` whose ``edorg`` is in scope."""
        res = self.model.get(path)
        table = self.tables.get(path)
        if res is None or table is None or value not in res.key_paths or edorg not in res.key_paths:
            return set()
        scope = orjson.dumps(sorted(self.edorgs(conn))).decode()
        vpath, epath = ".".join(res.key_paths[value]), ".".join(res.key_paths[edorg])
        out = {v for (v,) in conn.execute(
            f"SELECT json_extract(doc, '$.{vpath}') FROM \"{table}\""
            f" WHERE json_extract(doc, '$.{epath}') IN (SELECT value FROM json_each(?))", (scope,))}
        if including_deletes:  # the ...IncludingDeletes views: deleted associations count too
            out |= {v for (v,) in conn.execute(
                f"SELECT json_extract(old_key, '$.{value}') FROM tracked_changes WHERE resource = ?"
                f" AND kind = 'delete' AND json_extract(old_key, '$.{edorg}') IN (SELECT value FROM json_each(?))",
                (path, scope))}
        return out

    def people(self, conn: sqlite3.Connection, key: str, including_deletes: bool = False) -> set[Any]:
        """The unique ids of ``key`` (studentUniqueId, ...) reachable from the claim's education organizations."""
        ck = ("people", key, including_deletes, id(conn))
        if ck in self._cache:
            return self._cache[ck]
        if key == "studentUniqueId":
            out = self._assoc_values(conn, "/ed-fi/studentSchoolAssociations", key, "schoolId", including_deletes)
        elif key in ("contactUniqueId", "parentUniqueId"):
            students = self.people(conn, "studentUniqueId", including_deletes)
            assoc = "/ed-fi/studentContactAssociations" if key == "contactUniqueId" else \
                "/ed-fi/studentParentAssociations"
            out = set()
            res, table = self.model.get(assoc), self.tables.get(assoc)
            if res is not None and table is not None and key in res.key_paths:
                cpath, spath = ".".join(res.key_paths[key]), ".".join(res.key_paths["studentUniqueId"])
                students_json = orjson.dumps(sorted(students, key=str)).decode()
                out = {v for (v,) in conn.execute(
                    f"SELECT json_extract(doc, '$.{cpath}') FROM \"{table}\""
                    f" WHERE json_extract(doc, '$.{spath}') IN (SELECT value FROM json_each(?))", (students_json,))}
        elif key == "staffUniqueId":
            out = set()
            for assoc in ("/ed-fi/staffEducationOrganizationAssignmentAssociations",
                          "/ed-fi/staffEducationOrganizationEmploymentAssociations"):
                out |= self._assoc_values(conn, assoc, key, "educationOrganizationId", including_deletes)
        else:
            out = set()
        self._cache[ck] = out
        return out

    def _allowed(self, conn: sqlite3.Connection, name: str, including_deletes: bool) -> set[Any]:
        return self.edorgs(conn) if name in EDORG_KEYS else self.people(conn, name, including_deletes)

    def read_filter(self, res: Resource, changes: bool = False) -> AuthFilter | None:
        """The store hook that keeps a collection and its count (Read), or its tracked changes (``changes``:
        ReadChanges), to what the client may read; None when nothing is filtered. Raises
        :class:`AuthorizationDenied` without the claim."""
        strategy = self.strategy(res, READ_CHANGES if changes else "Read")
        if strategy == NO_FURTHER:
            return None
        scope = self

        def clause(conn: sqlite3.Connection, tracked: bool) -> tuple[str, list[Any]]:
            scope._cache.clear()  # one request: the sets are computed on this connection, once
            parts: list[str] = []
            args: list[Any] = []
            if strategy == NAMESPACE:
                npath = _namespace_path(res)
                if npath is None:  # nothing to check the prefix against
                    return "1", []
                column = ("json_extract(old_key, '$.namespace')" if tracked
                          else f"json_extract(doc, '$.{'.'.join(npath)}')")
                ors = " OR ".join(f"{column} LIKE ?" for _ in scope.spec.namespaces) or "0"
                parts.append(f"({ors})")
                args += [ns.replace("%", "") + "%" for ns in scope.spec.namespaces]
            else:
                for name in scope._subjects(res, strategy):
                    column = (f"json_extract(old_key, '$.{name}')" if tracked
                              else f"json_extract(doc, '$.{'.'.join(res.key_paths[name])}')")
                    allowed = scope._allowed(conn, name, including_deletes=tracked)
                    parts.append(f"{column} IN (SELECT value FROM json_each(?))")
                    args.append(orjson.dumps(sorted(allowed, key=str)).decode())
            return (" AND ".join(parts) or "1"), args

        return clause

    def check_item(self, conn: sqlite3.Connection, res: Resource, action: str, doc: dict,
                   *, proposed: bool = False) -> None:
        """Single-item authorization of ``doc`` for ``action``; raises :class:`AuthorizationDenied`."""
        strategy = self.strategy(res, action)
        if strategy == NO_FURTHER:
            return
        self._cache.clear()
        if strategy == NAMESPACE:
            npath = _namespace_path(res)
            if npath is None:
                return
            value = value_at(doc, npath)
            if not any(isinstance(value, str) and value.startswith(ns) for ns in self.spec.namespaces):
                prefixes = "', '".join(self.spec.namespaces)
                text = ("Access to the resource item could not be authorized because the Namespace of the resource"
                        " is empty." if not value else
                        f"Access to the resource item could not be authorized based on the caller's NamespacePrefix"
                        f" claims: '{prefixes}'.")
                if self.api_version >= "7.2":
                    raise AuthorizationDenied("security:authorization",
                                              "Access to the requested data could not be authorized.", [text])
                raise AuthorizationDenied("security:authorization", text)
            return
        failed = []
        for name in self._subjects(res, strategy):
            value = value_at(doc, res.key_paths[name])
            if value not in self._allowed(conn, name, including_deletes=False):
                failed.append(name)
        if failed:
            raise self._relationship_denied(failed, proposed)

    def _relationship_denied(self, failed: list[str], proposed: bool) -> AuthorizationDenied:
        v = self.api_version
        if v < "6":  # AuthorizationSegmentsVerifier (5.3)
            return AuthorizationDenied("security:authorization", "Authorization denied.  The claim does not have any"
                                       " established relationships with the requested resource.")
        claims = sorted(self.spec.education_organizations)
        claim_word = "claim" if len(claims) == 1 else "claims"
        shown = [str(c) for c in claims[:5]] + (["..."] if len(claims) > 5 else [])
        claims_text = ", ".join(shown) or "none"
        names = sorted(n[0].upper() + n[1:] for n in failed)
        names_text = "'" + "', '".join(names) + "'"
        if len(names) == 1:
            text = (f"No relationships have been established between the caller's education organization id"
                    f" {claim_word} ({claims_text}) and the resource item's {names_text} value.")
        else:
            text = (f"No relationships have been established between the caller's education organization id"
                    f" {claim_word} ({claims_text}) and one or more of the following properties of the resource"
                    f" item: {names_text}.")
        if v < "7.2":  # RepositoryOperationAuthorizationDecoratorBase (6.1), EntityAuthorizer (7.1)
            return AuthorizationDenied("security:authorization", "Authorization denied. " + text)
        hints = sorted({HINTS[n] for n in failed if n in HINTS})
        detail = "Access to the requested data could not be authorized."
        if hints:  # EntityInstanceViewBasedFilterAuthorizer (7.3.2)
            detail += " Hint: " + " ".join(hints)
        return AuthorizationDenied("security:authorization", detail, [text])


def _namespace_path(res: Resource) -> tuple[str, ...] | None:
    """Where an item keeps the namespace the NamespaceBased strategy checks (``namespace``, or the referenced
    assessment's, as in ``assessmentReference.namespace``)."""
    if "namespace" in (res.schema.get("properties") or {}):
        return ("namespace",)
    return res.key_paths.get("namespace") or res.field_paths.get("namespace")


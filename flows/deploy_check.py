"""The ``prefect deploy`` build step of ``prefect.yaml``: no deployment registered with a credential.

A Prefect server refuses a deployment, or a flow run of one, whose parameters carry a credential
(the flows' parameter schemas hold the refusal: :class:`flows.params.CredentialFree`), but when it
refuses the creation of a deployment its answer repeats the request, credential and all, and
``prefect deploy`` prints it; and it does not check the parameters of a deployment's schedules
and triggers at all (the automation of a trigger stores them as given). This step runs before
``prefect deploy`` registers anything: it checks the parameters of every deployment in the file,
and of their schedules and triggers, against the same schemas, with the environment filled in as
``prefect deploy`` fills it, and fails the deploy with one line per offending parameter, naming
it, never its value.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any, cast

from flows.params import CREDENTIAL_HELP, CREDENTIAL_REFUSAL, CredentialParameterError


def _parameter_schema(entrypoint: str) -> dict[str, Any]:
    """The parameter schema ``prefect deploy`` publishes for the flow at ``entrypoint``
    (``path.py:function``, relative to the working directory, as in ``prefect.yaml``)."""
    path, _, function = entrypoint.rpartition(":")
    return _schema_of(f"{Path(path).resolve()}:{function}")


@cache
def _schema_of(entrypoint: str) -> dict[str, Any]:
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    flow: Any = load_flow_from_entrypoint(entrypoint)
    return parameter_schema(flow).model_dump(exclude_unset=True)


def credential_parameters(parameters: dict[str, Any], entrypoint: str) -> list[str]:
    """The parameters (``params.out``, ``params.cubes[0]``) that the parameter schema of the flow at
    ``entrypoint`` refuses as credentials; other schema errors are the server's to report."""
    from prefect.utilities.schema_tools import validate

    errors = validate(parameters, _parameter_schema(entrypoint), ignore_required=True)
    found = [
        e.json_path.removeprefix("$.")
        for e in errors
        if e.validator == "const" and e.validator_value == CREDENTIAL_REFUSAL
    ]
    return sorted(set(found))


def deployment_credentials(prefect_file: str | Path = "prefect.yaml") -> dict[str, list[str]]:
    """By deployment name, the parameters of ``prefect_file`` that carry a credential
    (``params.out``, ``trigger 0: params.cubes``, ``schedule 1: ...``), ``{{ $VAR }}`` filled from
    this process's environment as ``prefect deploy`` fills it."""
    import yaml
    from prefect.utilities.templating import apply_values

    config = yaml.safe_load(Path(prefect_file).read_text())
    found: dict[str, list[str]] = {}
    for raw in config.get("deployments") or []:
        # a dict: remove_notset=False leaves an unset {{ $VAR }} as written, as prefect deploy does
        deployment = cast(dict[str, Any], apply_values(raw, dict(os.environ), remove_notset=False))
        sources = [("", deployment.get("parameters"))]
        for kind in ("schedule", "trigger"):
            sources += [
                (f"{kind} {i}: ", s.get("parameters")) for i, s in enumerate(deployment.get(f"{kind}s") or [])
            ]
        bad = [
            f"{where}{name}"
            for where, parameters in sources
            if parameters
            for name in credential_parameters(parameters, deployment["entrypoint"])
        ]
        if bad:
            found[str(deployment.get("name"))] = bad
    return found


def refuse_credentials(prefect_file: str = "prefect.yaml") -> dict[str, Any]:
    """The build step: raises :class:`~flows.params.CredentialParameterError` (one line, names
    only) if a parameter in ``prefect_file`` carries a credential; ``{}`` (no step outputs) if none."""
    found = deployment_credentials(prefect_file)
    if found:
        where = "; ".join(f"{name} ({', '.join(bad)})" for name, bad in found.items())
        raise CredentialParameterError(
            f"{prefect_file}: parameters carry a credential, so nothing was deployed: {where}; "
            f"{CREDENTIAL_HELP}"
        )
    return {}

"""Scale-in takes idle workers first (issue #28): the rendered identity, its least privilege and the
downward-API env a worker needs to keep its own pod's pod-deletion-cost current."""

from __future__ import annotations

import pytest

from tests.chart.render import SCENARIOS, HelmError, Rendered, env_of, pod_spec, rendered, template


def render(*sets: str) -> Rendered:
    return Rendered("custom", tuple(template(sets=sets)))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_worker_runs_as_an_identity_that_may_only_read_and_patch_pods(scenario):
    r = rendered(scenario)
    account = r.one("ServiceAccount", "worker")
    role = r.one("Role", "worker")
    binding = r.one("RoleBinding", "worker")
    namespace = account["metadata"]["namespace"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}]
    # The token is mounted only into the workers that use it, not into every pod of the account.
    assert account["automountServiceAccountToken"] is False
    assert not r.of_kind("ClusterRole") and not r.of_kind("ClusterRoleBinding")
    for model, deployment in r.workers().items():
        spec = pod_spec(deployment)
        assert spec["serviceAccountName"] == account["metadata"]["name"], model
        assert spec["automountServiceAccountToken"] is True, model
        env = env_of(spec["containers"][0])
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert env["DELETION_COST_DEBOUNCE_SECONDS"]["value"] == "5"


def test_the_other_pods_keep_no_token():
    r = rendered("default")
    for kind in ("Deployment", "StatefulSet"):
        for obj in r.of_kind(kind):
            if obj["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
                assert pod_spec(obj)["automountServiceAccountToken"] is False, obj["metadata"]["name"]
                assert "serviceAccountName" not in pod_spec(obj), obj["metadata"]["name"]


def test_idle_first_off_renders_no_identity_and_no_token():
    r = render("scaleIn.idleFirst=false")
    assert not r.of_kind("ServiceAccount") and not r.of_kind("Role") and not r.of_kind("RoleBinding")
    for deployment in r.workers().values():
        spec = pod_spec(deployment)
        assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
        assert not {"POD_NAME", "POD_NAMESPACE"} & set(env_of(spec["containers"][0]))


def test_the_debounce_is_a_value_and_stays_under_the_scale_down_window():
    r = render("scaleIn.debounceSeconds=12")
    for deployment in r.workers().values():
        assert env_of(pod_spec(deployment)["containers"][0])["DELETION_COST_DEBOUNCE_SECONDS"]["value"] == "12"
    # A cost that changes only after the debounce must be current before the HPA acts on a lower count.
    behavior = rendered("default").one("ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 5
    with pytest.raises(HelmError, match="scaleIn.debounceSeconds"):
        render("scaleIn.debounceSeconds=60")
    with pytest.raises(HelmError, match="scaleIn.debounceSeconds"):
        render("keda.behavior.scaleDown.stabilizationWindowSeconds=3")

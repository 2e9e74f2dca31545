//! The RBAC the authority ships with grants exactly what its watchers read.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use std::collections::BTreeSet;

#[test]
fn cluster_role_grants_get_list_watch_on_exactly_the_watched_kinds() {
    let text = std::fs::read_to_string(nodedns_testsupport::workspace_path("manifests/authority-rbac.yaml"))
        .unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role: ClusterRole =
        serde_json::from_value(docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap().clone()).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<String> = rule.verbs.into_iter().collect();
        assert_eq!(verbs, ["get", "list", "watch"].map(String::from).into(), "read-only verbs");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    let watched: BTreeSet<String> =
        ["/namespaces", "/services", "/pods", "discovery.k8s.io/endpointslices"].map(String::from).into();
    assert_eq!(granted, watched);
    let binding: ClusterRoleBinding =
        serde_json::from_value(docs.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap().clone())
            .unwrap();
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", "nodedns-authority"));
}

#[test]
fn kube_client_builds_without_a_cluster() {
    // Guards against two rustls crypto providers in the build (crate-stack.md, gotcha 1): building
    // an https client panics then.
    let dir = nodedns_testsupport::TempDir::new("kubecfg");
    let path = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let settings =
        nodedns_authority::kube_source::KubeSettings { kubeconfig: Some(path), ..Default::default() };
    runtime
        .block_on(async { nodedns_authority::kube_source::client(&settings).await })
        .expect("client builds");
}

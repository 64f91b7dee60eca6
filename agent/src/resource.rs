//! `resource:` — attributes the agent adds to the resource of every span and log record it
//! forwards (received over OTLP or tailed), where the resource lacks the key; in a Kubernetes
//! sidecar, the pod metadata the manifest passes from the downward API as environment variables
//! (`k8s.pod.name: ${K8S_POD_NAME}`). The `k8s.*` ones also label one `sidelight_kubernetes_info`
//! series, so Prometheus can join the agent's metrics to the pod without cluster RBAC.

use std::collections::BTreeMap;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sidelight_collector::resource::ExtraResource;

use crate::config::common::ConfigError;

/// Attributes a sidecar should not set for everything it forwards: the service is the app's
/// (`OTEL_SERVICE_NAME`, `logs[].service`).
const REFUSED: [&str; 1] = ["service.name"];

/// Validates `resource:` as written: keys must be non-empty and not `service.name`; empty values
/// are left out (so `${VAR:-}` makes an attribute optional).
pub fn build(raw: &BTreeMap<String, String>, errors: &mut Vec<ConfigError>) -> ExtraResource {
    let mut attrs = Vec::new();
    for (k, v) in raw {
        if k.trim().is_empty() {
            errors.push(ConfigError {
                path: "resource".into(),
                message: "an attribute key is empty".into(),
            });
        } else if REFUSED.contains(&k.as_str()) {
            errors.push(ConfigError {
                path: format!("resource.{k}"),
                message: "the service is the app's: set OTEL_SERVICE_NAME in the app, and \
                          logs[].service for tailed files"
                    .into(),
            });
        } else if !v.is_empty() {
            attrs.push((k.clone(), v.clone()));
        }
    }
    ExtraResource::new(attrs)
}

/// Adds the attributes to each log source's resource where the source does not set the key
/// (a source's own `resource:` wins).
pub fn apply_to_logs(
    extra: &ExtraResource,
    sources: &mut [sidelight_collector::logs::LogSourceConfig],
) {
    for source in sources {
        for (k, v) in extra.attributes() {
            source
                .resource
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
    }
}

type Labels = Vec<(String, String)>;

/// `sidelight_kubernetes_info`: one series labelled with the `k8s.*` resource attributes
/// (`k8s.pod.name` -> `k8s_pod_name`), value 1; absent when there are none.
#[derive(Debug, Clone, Default)]
pub struct KubernetesInfo(Family<Labels, Gauge>);

impl KubernetesInfo {
    /// Registers the family.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sidelight_kubernetes_info",
            "Kubernetes metadata of the pod the agent runs in (from the resource: section, set \
             from the downward API)",
            self.0.clone(),
        );
    }

    /// Replaces the series with one for these attributes.
    pub fn set(&self, extra: &ExtraResource) {
        self.0.clear();
        let labels: Labels = extra
            .attributes()
            .iter()
            .filter(|(k, _)| k.starts_with("k8s."))
            .map(|(k, v)| (label_name(k), v.clone()))
            .collect();
        if !labels.is_empty() {
            self.0.get_or_create(&labels).set(1);
        }
    }
}

/// A Prometheus label name for an attribute key: characters outside `[a-zA-Z0-9_]` become `_`.
fn label_name(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_info_labels() {
        let raw: BTreeMap<String, String> = [
            ("k8s.pod.name", "checkout-1"),
            ("k8s.node.name", ""),
            ("deployment.environment", "prod"),
            ("service.name", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut errors = Vec::new();
        let extra = build(&raw, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "resource.service.name");
        assert_eq!(
            extra.attributes(),
            &[
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("k8s.pod.name".to_owned(), "checkout-1".to_owned()),
            ]
        );

        let info = KubernetesInfo::default();
        let mut registry = Registry::default();
        info.register(&mut registry);
        info.set(&extra);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("sidelight_kubernetes_info{k8s_pod_name=\"checkout-1\"} 1"),
            "{text}"
        );
        info.set(&ExtraResource::default());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(!text.contains("k8s_pod_name"), "{text}");
    }
}

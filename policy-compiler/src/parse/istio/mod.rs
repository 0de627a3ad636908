//! Istio's `security.istio.io` `AuthorizationPolicy` (v1, v1beta1), read with Istio's meaning
//! (`../shared/istio/semantics.md`) into the same policy model as the guide's format.
//!
//! A policy applies to one workload: the options name its namespace and labels, and the
//! compiler selects the policies istiod would push to that sidecar (its namespace and the root
//! namespace; `selector.matchLabels` a subset of the labels; `targetRef(s)` never, they are for
//! gateways and waypoints). Validation is istiod's webhook's, and stricter where Istio skips:
//! an invalid value fails the whole compile instead of dropping a rule (which widens a DENY).
//! Fields this build cannot decide yet (JWT request principals and claims, `experimental.*`)
//! are errors naming the field, never silently ignored.

mod rule;
pub mod values;

use saphyr::{Scalar, YamlData};

use super::reader::{describe, join, pos};
use super::{Node, ParsedPolicy, Parser};
use meshauthz_table::{Action, Attribute, Condition, Destination, Matcher, Policy, Rule};
use values::TrustBundle;

/// The workload Istio policies are compiled for, and the mesh settings that change their
/// meaning.
#[derive(Clone, Debug)]
pub struct IstioOptions {
    /// The workload's namespace; Istio input is refused without it.
    pub namespace: Option<String>,
    pub labels: Vec<(String, String)>,
    pub root_namespace: String,
    pub trust_domain: String,
    pub trust_domain_aliases: Vec<String>,
    /// Leave CUSTOM policies to Envoy's ext_authz instead of refusing them.
    pub ignore_custom: bool,
}

impl Default for IstioOptions {
    fn default() -> Self {
        IstioOptions {
            namespace: None,
            labels: Vec::new(),
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            trust_domain_aliases: Vec::new(),
            ignore_custom: false,
        }
    }
}

impl IstioOptions {
    fn bundle(&self) -> TrustBundle {
        let mut b = vec![self.trust_domain.clone()];
        b.extend(self.trust_domain_aliases.iter().cloned());
        TrustBundle(b)
    }
}

/// Whether a document is an Istio AuthorizationPolicy (by its `apiVersion` and `kind`).
pub(super) fn is_istio(doc: &Node<'_>) -> bool {
    let api = map_str(doc, "apiVersion").unwrap_or("");
    (api == "security.istio.io/v1" || api == "security.istio.io/v1beta1")
        && map_str(doc, "kind") == Some("AuthorizationPolicy")
}

/// A field of a mapping, without checking the others (Kubernetes metadata has many).
fn map_get<'n>(node: &'n Node<'n>, name: &str) -> Option<&'n Node<'n>> {
    let YamlData::Mapping(map) = &node.data else {
        return None;
    };
    map.iter().find_map(|(k, v)| match &k.data {
        YamlData::Value(Scalar::String(s)) if s.as_ref() == name => Some(v),
        _ => None,
    })
}

fn map_str<'n>(node: &'n Node<'n>, name: &str) -> Option<&'n str> {
    match &map_get(node, name)?.data {
        YamlData::Value(Scalar::String(s)) => Some(s.as_ref()),
        _ => None,
    }
}

/// Go's `strconv.ParseBool`, which istiod uses for `istio.io/dry-run`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const SPEC_FIELDS: &[&str] = &["selector", "targetRef", "targetRefs", "action", "provider", "rules"];
const DRY_RUN: &str = "istio.io/dry-run";

impl Parser<'_> {
    /// One Istio policy: `None` when it is not selected for the workload or does not compile
    /// (the errors are then in the diagnostics).
    pub(super) fn istio_policy(&mut self, doc: &Node<'_>) -> Option<ParsedPolicy> {
        self.istio_seen = true;
        let errors_before = self.error_count();
        if self.istio.namespace.is_none() {
            let (line, col) = pos(doc);
            self.at(
                line,
                col,
                "apiVersion",
                "an Istio AuthorizationPolicy applies to a workload: give its namespace (--namespace NS) and \
                 labels (--labels k=v,...)"
                    .into(),
            );
        }
        let top = self.fields(doc, "", TOP_FIELDS)?;
        let get = |name: &str| top.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let (line, col) = pos(doc);
        let Some(meta) = get("metadata") else {
            self.at(line, col, "metadata", "missing required field `metadata`".into());
            return None;
        };
        let name = self.meta_string(meta, "name");
        let namespace = self.meta_string(meta, "namespace");
        let dry_run = self.dry_run(meta);
        let spec_node = get("spec");
        let spec = match spec_node {
            // `spec: {}` and no spec at all are the same empty policy.
            None => Vec::new(),
            Some(n) if matches!(n.data, YamlData::Value(Scalar::Null)) => Vec::new(),
            Some(n) => self.fields(n, "spec", SPEC_FIELDS)?,
        };
        let sget = |name: &str| spec.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let action = match sget("action") {
            None => Some(Action::Allow),
            Some(a) => match self.string(a, "spec.action")? {
                "ALLOW" => Some(Action::Allow),
                "DENY" => Some(Action::Deny),
                "AUDIT" => Some(Action::Audit),
                "CUSTOM" => None,
                other => {
                    self.error(
                        a,
                        "spec.action",
                        format!("invalid action `{other}`: expected ALLOW, DENY, AUDIT or CUSTOM"),
                    );
                    return None;
                }
            },
        };
        if let (Some(p), Some(_)) = (sget("provider"), action) {
            self.error(p, "spec.provider", "`provider` is only for action CUSTOM".into());
        }
        let targeted = sget("targetRef").or(sget("targetRefs"));
        if let (Some(t), Some(_)) = (targeted, sget("selector")) {
            self.error(t, "spec", "`selector` and `targetRef(s)` cannot both be set".into());
        }
        let selected = self.selected(sget("selector"), namespace.as_deref(), targeted.is_some());
        if dry_run == Some(true) && matches!(action, None | Some(Action::Audit)) {
            self.error(
                meta,
                "metadata.annotations",
                format!("`{DRY_RUN}` is not supported for AUDIT and CUSTOM policies"),
            );
        }
        self.action = action;
        let ns = namespace.clone().unwrap_or_default();
        let rules_node = sget("rules");
        let mut rules = Vec::new();
        let rule_list = match rules_node {
            Some(r) => self.list(r, "spec.rules").unwrap_or(&[]),
            None => &[],
        };
        if rule_list.len() > 512 {
            self.error(rules_node?, "spec.rules", "at most 512 rules".into());
        }
        for (i, r) in rule_list.iter().enumerate() {
            if let Some(rule) = self.istio_rule(r, &format!("spec.rules[{i}]"), &ns) {
                rules.push(rule);
            }
        }
        if rule_list.is_empty() {
            let (line, col) = sget("action").map_or((line, col), pos);
            match action {
                Some(Action::Deny) => self.at(
                    line,
                    col,
                    "spec.rules",
                    "a DENY policy needs rules (Istio rejects it; it would deny nothing)".into(),
                ),
                None => self.at(line, col, "spec.rules", "a CUSTOM policy needs rules".into()),
                // Allow-nothing: selected, matching no request (Istio's `spec: {}`).
                Some(_) => rules.push(never_matching_rule()),
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        let (name, namespace) = (name?, namespace?);
        if !selected {
            return None;
        }
        let Some(action) = action else {
            let (line, col) = sget("action").map_or((line, col), pos);
            if self.istio.ignore_custom {
                self.notes.push(format!(
                    "{}: CUSTOM policy {namespace}/{name} left to Envoy's ext_authz (--ignore-custom)",
                    self.file
                ));
                return None;
            }
            self.at(
                line,
                col,
                "spec.action",
                "CUSTOM (ext_authz) policies are not compiled: keep them in Envoy's ext_authz filter and pass \
                 --ignore-custom to compile the rest"
                    .into(),
            );
            return None;
        };
        Some(ParsedPolicy {
            policy: Policy {
                name: format!("{namespace}.{name}"),
                action,
                rules,
                dry_run: dry_run.unwrap_or(false),
            },
            line,
            col,
            istio: true,
        })
    }

    fn meta_string(&mut self, meta: &Node<'_>, field: &str) -> Option<String> {
        let path = join("metadata", field);
        match map_get(meta, field) {
            None => {
                let why = if field == "namespace" {
                    " (the compiler cannot know which namespace it would be applied in)"
                } else {
                    ""
                };
                self.error(meta, &path, format!("missing required field `{field}`{why}"));
                None
            }
            Some(n) => {
                let s = self.string(n, &path)?;
                if s.is_empty() {
                    self.error(n, &path, format!("`{field}` is empty"));
                    return None;
                }
                Some(s.to_owned())
            }
        }
    }

    /// `metadata.annotations["istio.io/dry-run"]`; istiod enforces a value it cannot parse,
    /// its webhook rejects it, and so does this compiler.
    fn dry_run(&mut self, meta: &Node<'_>) -> Option<bool> {
        let node = map_get(meta, "annotations").and_then(|a| map_get(a, DRY_RUN))?;
        let path = format!("metadata.annotations[{DRY_RUN}]");
        let text = self.string(node, &path)?;
        let parsed = parse_bool(text);
        if parsed.is_none() {
            self.error(node, &path, format!("`{text}` is not a boolean (true or false)"));
        }
        parsed
    }

    /// Whether istiod would push the policy to this workload's sidecar.
    fn selected(&mut self, selector: Option<&Node<'_>>, namespace: Option<&str>, targeted: bool) -> bool {
        let mut labels_ok = true;
        if let Some(sel) = selector {
            let fields = self.fields(sel, "spec.selector", &["matchLabels"]).unwrap_or_default();
            if let Some((_, ml)) = fields.first() {
                if let YamlData::Mapping(map) = &ml.data {
                    for (k, v) in map {
                        let path = "spec.selector.matchLabels";
                        let (Some(k), Some(v)) = (self.string(k, path), self.string(v, path)) else {
                            continue;
                        };
                        if k.is_empty() || k.contains('*') || v.contains('*') {
                            self.error(
                                ml,
                                path,
                                format!("invalid selector label `{k}: {v}` (empty key or `*`)"),
                            );
                        }
                        labels_ok &= self.istio.labels.iter().any(|(lk, lv)| lk == k && lv == v);
                    }
                } else if !matches!(ml.data, YamlData::Value(Scalar::Null)) {
                    self.error(
                        ml,
                        "spec.selector.matchLabels",
                        format!("expected a mapping, found {}", describe(ml)),
                    );
                }
            }
        }
        let Some(workload_ns) = self.istio.namespace.clone() else {
            return false;
        };
        let in_scope = namespace.is_some_and(|ns| ns == workload_ns || ns == self.istio.root_namespace);
        in_scope && labels_ok && !targeted
    }
}

/// A rule no request matches: Istio's allow-nothing (an ALLOW or AUDIT policy without rules).
/// Every request has a method, so "no method" never holds.
fn never_matching_rule() -> Rule {
    Rule {
        sources: Vec::new(),
        destinations: vec![Destination {
            conditions: vec![Condition {
                attribute: Attribute::Method,
                negated: true,
                matchers: vec![Matcher::Present],
            }],
            ..Destination::default()
        }],
    }
}

//! Reading saphyr's marked nodes: positions, field paths, typed accessors and the located
//! diagnostics they report. The policy readers in the parent module are written in terms of
//! these, so every error names a line, a column and a field path the same way.

use meshauthz_table::Action;
use saphyr::{Scalar, YamlData};

use super::{Node, Parser};
use crate::diag::{Diagnostic, Severity, did_you_mean};

pub(super) fn pos(node: &Node<'_>) -> (usize, usize) {
    (node.span.start.line(), node.span.start.col() + 1)
}

pub(super) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

pub(super) fn describe(node: &Node<'_>) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) => "an alias",
        YamlData::BadValue => "an invalid value",
    }
}

impl Parser<'_> {
    pub(super) fn at(&mut self, line: usize, col: usize, path: &str, message: String) {
        self.diags.push(Diagnostic {
            severity: Severity::Error,
            file: self.file.to_owned(),
            line,
            col,
            path: path.to_owned(),
            message,
        });
    }

    pub(super) fn error(&mut self, node: &Node<'_>, path: &str, message: String) {
        let (line, col) = pos(node);
        self.at(line, col, path, message);
    }

    /// A construct that can never match what its author meant ([`Parser::action`]).
    pub(super) fn trap(&mut self, node: &Node<'_>, path: &str, message: String) {
        if self.action == Some(Action::Deny) {
            self.error(node, path, format!("{message} (in a DENY policy this denies nothing)"));
        } else {
            self.warn(node, path, message);
        }
    }

    pub(super) fn warn(&mut self, node: &Node<'_>, path: &str, message: String) {
        let (line, col) = pos(node);
        self.diags.push(Diagnostic {
            severity: Severity::Warning,
            file: self.file.to_owned(),
            line,
            col,
            path: path.to_owned(),
            message,
        });
    }

    /// The known fields of a mapping, in order; unknown ones are reported with a suggestion.
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node<'n>,
        path: &str,
        allowed: &[&str],
    ) -> Option<Vec<(&'n str, &'n Node<'n>)>> {
        let YamlData::Mapping(map) = &node.data else {
            self.error(node, path, format!("expected a mapping, found {}", describe(node)));
            return None;
        };
        let mut out = Vec::new();
        for (k, v) in map {
            let key = match &k.data {
                YamlData::Value(Scalar::String(s)) => s.as_ref(),
                _ => {
                    self.error(k, path, format!("expected a field name, found {}", describe(k)));
                    continue;
                }
            };
            if allowed.contains(&key) {
                out.push((key, v));
            } else {
                let hint = match did_you_mean(key, allowed) {
                    Some(s) => format!("; did you mean `{s}`?"),
                    None => format!("; expected one of {}", allowed.join(", ")),
                };
                self.error(k, &join(path, key), format!("unknown field `{key}`{hint}"));
            }
        }
        Some(out)
    }

    /// A Kubernetes-style resource (`apiVersion`, `kind`, `metadata`, `spec`) other than Istio's
    /// AuthorizationPolicy (read by [`super::istio`]) gets one precise error rather than a
    /// screenful of unknown fields.
    pub(super) fn refuse_kubernetes_resource(&mut self, doc: &Node<'_>) -> bool {
        let YamlData::Mapping(map) = &doc.data else {
            return false;
        };
        let field = |name: &str| {
            map.iter().find_map(|(k, v)| match &k.data {
                YamlData::Value(Scalar::String(s)) if s.as_ref() == name => Some((k, v)),
                _ => None,
            })
        };
        let Some((key, api)) = field("apiVersion") else {
            return false;
        };
        let api_version = match &api.data {
            YamlData::Value(Scalar::String(s)) => s.as_ref(),
            _ => "",
        };
        let kind = match field("kind").map(|(_, v)| &v.data) {
            Some(YamlData::Value(Scalar::String(s))) => s.as_ref(),
            _ => "",
        };
        let message = if api_version.starts_with("security.istio.io/") {
            format!(
                "Istio `{api_version}` `{kind}` is not read here: this compiler reads Istio's \
                 AuthorizationPolicy (security.istio.io/v1 or v1beta1) and the guide's format"
            )
        } else {
            format!(
                "a Kubernetes resource (`apiVersion: {api_version}`, kind `{kind}`) is not an \
                 AuthorizationPolicy in the guide's format (name, action, rules)"
            )
        };
        self.error(key, "apiVersion", message);
        true
    }

    pub(super) fn string<'n>(&mut self, node: &'n Node<'n>, path: &str) -> Option<&'n str> {
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Some(s.as_ref()),
            _ => {
                self.error(node, path, format!("expected a string, found {}", describe(node)));
                None
            }
        }
    }

    /// A list; `null` (an empty field) reads as an empty list.
    pub(super) fn list<'n>(&mut self, node: &'n Node<'n>, path: &str) -> Option<&'n [Node<'n>]> {
        match &node.data {
            YamlData::Sequence(items) => Some(items),
            YamlData::Value(Scalar::Null) => Some(&[]),
            _ => {
                self.error(node, path, format!("expected a list, found {}", describe(node)));
                None
            }
        }
    }
}

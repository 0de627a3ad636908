//! The YAML front end: `AuthorizationPolicy` documents -> validated [`Policy`] values.
//!
//! Works on saphyr's marked tree so that every diagnostic can name the line and column of the
//! offending node, plus its field path. Nothing is skipped: a rule that cannot be read fails the
//! whole compilation, because dropping a DENY rule would fail open.

use meshauthz_table::{Action, Destination, HeaderMatch, Pattern, Policy, Rule, Source};
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

pub mod istio;
mod reader;

use crate::check;
use crate::diag::{Diagnostic, Severity};
use reader::{describe, join, pos};

/// A policy read from a file, with where its name stands (for duplicate-name errors).
#[derive(Debug)]
pub(crate) struct ParsedPolicy {
    pub policy: Policy,
    pub line: usize,
    pub col: usize,
    /// Read from Istio's format.
    pub istio: bool,
}

const POLICY_FIELDS: &[&str] = &["name", "description", "labels", "action", "rules"];
const RULE_FIELDS: &[&str] = &["sources", "destinations"];
const SOURCE_FIELDS: &[&str] = &["principals", "ipBlocks"];
const DEST_FIELDS: &[&str] = &["hosts", "ports", "methods", "httpHeaderMatch"];
const HEADER_FIELDS: &[&str] = &["headerName", "regexMatch"];

/// Reads every policy document in `text`, reporting problems into `diags` and notes (what was
/// left out on purpose) into `notes`.
pub(crate) fn parse_file(
    file: &str,
    text: &str,
    options: &istio::IstioOptions,
    diags: &mut Vec<Diagnostic>,
    notes: &mut Vec<String>,
) -> Vec<ParsedPolicy> {
    let mut p = Parser {
        file,
        diags,
        action: None,
        istio: options,
        istio_seen: false,
        notes,
    };
    let docs = match MarkedYaml::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => {
            let m = e.marker();
            p.diags.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_owned(),
                line: m.line(),
                col: m.col() + 1,
                path: String::new(),
                message: format!("YAML syntax error: {}", e.info()),
            });
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for doc in &docs {
        if matches!(doc.data, YamlData::Value(Scalar::Null)) {
            continue; // an empty document between `---` separators
        }
        let policy = if istio::is_istio(doc) {
            p.istio_policy(doc)
        } else {
            p.policy(doc)
        };
        out.extend(policy);
    }
    // Istio policies that select another workload leave nothing, and that is not an error.
    if out.is_empty() && !p.istio_seen && !p.diags.iter().any(|d| d.file == file && d.severity == Severity::Error) {
        p.at(1, 1, "", "the file holds no AuthorizationPolicy document".into());
    }
    out
}

struct Parser<'a> {
    file: &'a str,
    diags: &'a mut Vec<Diagnostic>,
    /// The action of the policy being read: a construct that can never match is an error in a
    /// DENY policy (the author meant to forbid something, and forbids nothing) and a warning in
    /// an ALLOW policy (it only ever denies).
    action: Option<Action>,
    istio: &'a istio::IstioOptions,
    istio_seen: bool,
    notes: &'a mut Vec<String>,
}

type Node<'n> = MarkedYaml<'n>;

/// Whether an exact or prefix principal literal can start a SPIFFE ID (case-insensitively, as
/// the scheme may be written either way).
fn could_be_spiffe(literal: &str) -> bool {
    let lower = literal.to_ascii_lowercase();
    lower.starts_with("spiffe://") || "spiffe://".starts_with(&lower)
}

impl Parser<'_> {
    fn policy(&mut self, doc: &Node<'_>) -> Option<ParsedPolicy> {
        let errors_before = self.error_count();
        if self.refuse_kubernetes_resource(doc) {
            return None;
        }
        let fields = self.fields(doc, "", POLICY_FIELDS)?;
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let (line, col) = pos(doc);
        let name = match get("name") {
            None => {
                self.at(line, col, "name", "missing required field `name`".into());
                None
            }
            Some(n) => self.string(n, "name").and_then(|s| {
                let valid = (1..=63).contains(&s.len())
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    self.error(
                        n,
                        "name",
                        format!("invalid policy name `{s}`: use 1-63 characters of [A-Za-z0-9_-]"),
                    );
                }
                valid.then(|| (s.to_owned(), pos(n)))
            }),
        };
        if let Some(d) = get("description") {
            self.string(d, "description");
        }
        if let Some(labels) = get("labels") {
            self.labels(labels);
        }
        let action = match get("action") {
            None => {
                self.at(
                    line,
                    col,
                    "action",
                    "missing required field `action` (ALLOW or DENY)".into(),
                );
                None
            }
            Some(a) => self.string(a, "action").and_then(|s| match s {
                "ALLOW" => Some(Action::Allow),
                "DENY" => Some(Action::Deny),
                other => {
                    let upper = other.to_ascii_uppercase();
                    let hint = if upper == "ALLOW" || upper == "DENY" {
                        format!("; did you mean `{upper}`? (actions are case-sensitive)")
                    } else {
                        String::new()
                    };
                    self.error(
                        a,
                        "action",
                        format!("invalid action `{other}`: expected ALLOW or DENY{hint}"),
                    );
                    None
                }
            }),
        };
        self.action = action;
        let mut rules = Vec::new();
        if let Some(list) = get("rules").and_then(|r| self.list(r, "rules")) {
            for (i, r) in list.iter().enumerate() {
                if let Some(rule) = self.rule(r, &format!("rules[{i}]")) {
                    rules.push(rule);
                }
            }
        }
        let ((name, (line, col)), action) = (name?, action?);
        (self.error_count() == errors_before).then_some(ParsedPolicy {
            policy: Policy {
                name,
                action,
                rules,
                dry_run: false,
            },
            line,
            col,
            istio: false,
        })
    }

    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.severity == Severity::Error).count()
    }

    fn labels(&mut self, node: &Node<'_>) {
        match &node.data {
            YamlData::Mapping(map) => {
                for (k, v) in map {
                    let key = self.string(k, "labels");
                    if let Some(key) = key {
                        self.string(v, &join("labels", key));
                    }
                }
            }
            YamlData::Value(Scalar::Null) => {}
            _ => self.error(
                node,
                "labels",
                format!("expected a mapping of strings, found {}", describe(node)),
            ),
        }
    }

    fn rule(&mut self, node: &Node<'_>, path: &str) -> Option<Rule> {
        let fields = self.fields(node, path, RULE_FIELDS)?;
        let mut rule = Rule::default();
        for (key, value) in fields {
            let list_path = join(path, key);
            let Some(items) = self.list(value, &list_path) else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{list_path}[{i}]");
                if key == "sources" {
                    rule.sources.extend(self.source(item, &item_path));
                } else {
                    rule.destinations.extend(self.destination(item, &item_path));
                }
            }
        }
        Some(rule)
    }

    fn source(&mut self, node: &Node<'_>, path: &str) -> Option<Source> {
        let errors_before = self.error_count();
        let fields = self.fields(node, path, SOURCE_FIELDS)?;
        let misspelled = self.error_count() > errors_before;
        let mut source = Source::default();
        let mut listed = 0;
        for (key, value) in fields {
            let list_path = join(path, key);
            let Some(items) = self.list(value, &list_path) else {
                continue;
            };
            listed += items.len();
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{list_path}[{i}]");
                let Some(text) = self.string(item, &item_path) else {
                    continue;
                };
                if key == "principals" {
                    source.principals.extend(self.principal(item, &item_path, text));
                } else {
                    match check::ip_block(text) {
                        Ok((net, cleared)) => {
                            if cleared {
                                self.warn(item, &item_path, format!("`{text}` has host bits set; it means {net}"));
                            }
                            if let Some(v4) = check::ipv4_mapped(&net) {
                                self.trap(
                                    item,
                                    &item_path,
                                    format!(
                                        "`{text}` is an IPv4-mapped IPv6 block, which never matches: Envoy reports \
                                         IPv4 peers as IPv4; write `{v4}`"
                                    ),
                                );
                            }
                            source.ip_blocks.push(net);
                        }
                        Err(e) => self.error(item, &item_path, format!("invalid IP block `{text}`: {e}")),
                    }
                }
            }
        }
        if listed == 0 && !misspelled {
            self.error(
                node,
                path,
                "a source needs `principals` or `ipBlocks` (an empty source would match nothing)".into(),
            );
        }
        (!source.principals.is_empty() || !source.ip_blocks.is_empty()).then_some(source)
    }

    fn pattern(&mut self, node: &Node<'_>, path: &str, text: &str, what: &str) -> Option<Pattern> {
        let pattern = Pattern::parse(text);
        if pattern.is_none() {
            self.error(
                node,
                path,
                format!(
                    "invalid {what} pattern `{text}`: `*` may stand only alone, at the start, or at the end (not both)"
                ),
            );
        }
        pattern
    }

    fn principal(&mut self, node: &Node<'_>, path: &str, text: &str) -> Option<Pattern> {
        let pattern = self.pattern(node, path, text, "principal")?;
        match &pattern {
            Pattern::Exact(id) if id.to_ascii_lowercase().starts_with("spiffe://") => {
                if let Err(e) = meshauthz_table::spiffe::validate(id) {
                    self.error(node, path, format!("invalid SPIFFE ID `{id}`: {e}"));
                    return None;
                }
            }
            Pattern::Exact(_) | Pattern::Prefix(_) if !could_be_spiffe(pattern.literal()) => self.trap(
                node,
                path,
                format!(
                    "principal `{text}` can never match: a principal is the SPIFFE ID of the peer's certificate \
                     (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`)"
                ),
            ),
            _ => {}
        }
        if let Some(why) = check::principal_pattern_trap(&pattern) {
            self.warn(node, path, format!("principal pattern `{text}` {why}"));
        }
        Some(pattern)
    }

    fn destination(&mut self, node: &Node<'_>, path: &str) -> Option<Destination> {
        let fields = self.fields(node, path, DEST_FIELDS)?;
        let mut dest = Destination::default();
        // How many entries the author listed under hosts and ports (None: field absent).
        let mut listed: [Option<(usize, &Node<'_>)>; 2] = [None, None];
        for (key, value) in fields {
            let list_path = join(path, key);
            if key == "httpHeaderMatch" {
                dest.header = self.header_match(value, &list_path);
                continue;
            }
            let Some(items) = self.list(value, &list_path) else {
                continue;
            };
            match key {
                "hosts" => listed[0] = Some((items.len(), value)),
                "ports" => listed[1] = Some((items.len(), value)),
                _ => {}
            }
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{list_path}[{i}]");
                match key {
                    "hosts" => {
                        let Some(text) = self.string(item, &item_path) else {
                            continue;
                        };
                        dest.hosts.extend(self.host(item, &item_path, text));
                    }
                    "ports" => dest.ports.extend(self.port(item, &item_path)),
                    _ => dest.methods.extend(self.method(item, &item_path)),
                }
            }
        }
        for (field, listed) in ["hosts", "ports"].into_iter().zip(listed) {
            match listed {
                None => self.error(node, &join(path, field), format!("a destination requires `{field}`")),
                Some((0, value)) => self.error(value, &join(path, field), format!("`{field}` must not be empty")),
                Some(_) => {}
            }
        }
        Some(dest)
    }

    fn method(&mut self, node: &Node<'_>, path: &str) -> Option<String> {
        let m = self.string(node, path)?;
        if !check::is_http_token(m) {
            self.error(node, path, format!("`{m}` is not an HTTP method token"));
            return None;
        }
        let upper = m.to_ascii_uppercase();
        if upper != m && check::STANDARD_METHODS.contains(&upper.as_str()) {
            self.warn(
                node,
                path,
                format!("methods are case-sensitive: `{m}` never matches `{upper}` requests; did you mean `{upper}`?"),
            );
        }
        Some(m.to_owned())
    }

    fn host(&mut self, node: &Node<'_>, path: &str, text: &str) -> Option<Pattern> {
        let pattern = self.pattern(node, path, text, "host")?;
        let literal = pattern.literal();
        if let Some((bracketed, port)) = literal.strip_prefix('[').and_then(|l| l.split_once("]:")) {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                self.error(
                    node,
                    path,
                    format!(
                        "hosts are matched without their port: write `[{bracketed}]` and list the port under `ports`"
                    ),
                );
                return None;
            }
        }
        if let Some((_, port)) = literal.rsplit_once(':') {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !literal.contains("::") {
                self.error(
                    node,
                    path,
                    format!(
                        "hosts are matched without their port: write `{}` and list the port under `ports`",
                        text.trim_end_matches(port).trim_end_matches(':')
                    ),
                );
                return None;
            }
        }
        if literal.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(node, path, format!("invalid host `{text}`: whitespace is not allowed"));
            return None;
        }
        let lower = |s: &str| s.to_ascii_lowercase();
        Some(match pattern {
            Pattern::Any => Pattern::Any,
            Pattern::Exact(s) => Pattern::Exact(lower(s.strip_suffix('.').unwrap_or(&s))),
            Pattern::Prefix(s) => Pattern::Prefix(lower(&s)),
            Pattern::Suffix(s) => Pattern::Suffix(lower(s.strip_suffix('.').unwrap_or(&s))),
        })
    }

    fn port(&mut self, node: &Node<'_>, path: &str) -> Option<u16> {
        match &node.data {
            YamlData::Value(Scalar::Integer(n)) => match u16::try_from(*n) {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    self.error(node, path, format!("port {n} is outside 1..=65535"));
                    None
                }
            },
            _ => {
                self.error(
                    node,
                    path,
                    format!("a port is an integer in 1..=65535, found {}", describe(node)),
                );
                None
            }
        }
    }

    fn header_match(&mut self, node: &Node<'_>, path: &str) -> Option<HeaderMatch> {
        let fields = self.fields(node, path, HEADER_FIELDS)?;
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let missing = |p: &mut Self, field: &str| {
            p.error(node, &join(path, field), format!("missing required field `{field}`"));
        };
        let name = match get("headerName") {
            None => {
                missing(self, "headerName");
                None
            }
            Some(n) => {
                let np = join(path, "headerName");
                self.string(n, &np).and_then(|s| {
                    let bare = s.strip_prefix(':').unwrap_or(s);
                    if check::is_http_token(bare) {
                        Some(s.to_ascii_lowercase())
                    } else {
                        self.error(n, &np, format!("`{s}` is not a valid header name"));
                        None
                    }
                })
            }
        };
        let regex = match get("regexMatch") {
            None => {
                missing(self, "regexMatch");
                None
            }
            Some(r) => {
                let rp = join(path, "regexMatch");
                self.string(r, &rp).and_then(|s| {
                    if let Some(construct) = check::unsupported_regex_construct(s) {
                        self.error(
                            r,
                            &rp,
                            format!("regex `{s}` uses {construct}, which the regex engine does not support"),
                        );
                        return None;
                    }
                    // The raw pattern first, for messages in the author's terms and because a
                    // pattern like `a)|(b` only becomes valid once wrapped in the anchors.
                    let build = |p: &str| regex::RegexBuilder::new(p).size_limit(1 << 20).build();
                    match build(s).and_then(|_| build(&format!("^(?:{s})$"))) {
                        Ok(_) => Some(s.to_owned()),
                        Err(e) => {
                            let e = e.to_string();
                            let reason = e
                                .lines()
                                .last()
                                .unwrap_or_default()
                                .trim()
                                .trim_start_matches("error: ");
                            self.error(r, &rp, format!("invalid regex `{s}`: {reason}"));
                            None
                        }
                    }
                })
            }
        };
        Some(HeaderMatch {
            name: name?,
            regex: regex?,
        })
    }
}

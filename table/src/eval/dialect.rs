//! The header regex dialect: RE2's (Envoy's `safe_regex`) and the GCP API's ECMAScript, where
//! `\d`, `\w`, `\s` and `\b` are ASCII. Rust's `regex` makes them Unicode (`\d` matches `١`, an
//! Arabic-Indic digit), so a DENY on `x-id: \d+` would not mean what it means in Envoy. Each
//! Perl class is rewritten into the ASCII set it stands for before the regex is built, in the
//! table's builder, so the filter, `policy-compiler check` and the benchmarks all agree.

use regex_syntax::ast::parse::Parser;
use regex_syntax::ast::{self, Ast, ClassPerlKind, ClassSetItem, Visitor};

/// RE2's Perl classes: `\s` is `[\t\n\f\r ]` (no vertical tab, unlike Rust's ASCII `\s`).
fn ascii_set(kind: &ClassPerlKind) -> &'static str {
    match kind {
        ClassPerlKind::Digit => "0-9",
        ClassPerlKind::Word => "0-9A-Za-z_",
        ClassPerlKind::Space => r"\t\n\x0C\r ",
    }
}

/// `regex` with every Perl class and word boundary made ASCII. A pattern the parser rejects is
/// returned unchanged, so that the regex builder reports the error in the author's terms.
pub(crate) fn ascii_perl_classes(regex: &str) -> String {
    let Ok(parsed) = Parser::new().parse(regex) else {
        return regex.to_owned();
    };
    let Ok(mut edits) = ast::visit(&parsed, Edits(Vec::new()));
    // Spans do not overlap; apply from the end so earlier offsets stay valid.
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = regex.to_owned();
    for (start, end, replacement) in edits {
        if out.get(start..end).is_some() {
            out.replace_range(start..end, &replacement);
        }
    }
    out
}

/// (start, end, replacement) byte ranges of the pattern.
struct Edits(Vec<(usize, usize, String)>);

impl Visitor for Edits {
    type Output = Vec<(usize, usize, String)>;
    type Err = std::convert::Infallible;

    fn finish(self) -> Result<Self::Output, Self::Err> {
        Ok(self.0)
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), Self::Err> {
        match ast {
            Ast::ClassPerl(c) => {
                let neg = if c.negated { "^" } else { "" };
                self.push(&c.span, format!("[{neg}{}]", ascii_set(&c.kind)));
            }
            Ast::Assertion(a) => match a.kind {
                ast::AssertionKind::WordBoundary => self.push(&a.span, r"(?-u:\b)".to_owned()),
                ast::AssertionKind::NotWordBoundary => self.push(&a.span, r"(?-u:\B)".to_owned()),
                _ => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn visit_class_set_item_pre(&mut self, item: &ClassSetItem) -> Result<(), Self::Err> {
        if let ClassSetItem::Perl(c) = item {
            // Inside brackets a positive class is its ranges; a negated one a nested class.
            let set = ascii_set(&c.kind);
            let replacement = if c.negated { format!("[^{set}]") } else { set.to_owned() };
            self.push(&c.span, replacement);
        }
        Ok(())
    }
}

impl Edits {
    fn push(&mut self, span: &ast::Span, replacement: String) {
        self.0.push((span.start.offset, span.end.offset, replacement));
    }
}

#[cfg(test)]
mod tests {
    use super::ascii_perl_classes as ascii;

    #[test]
    fn perl_classes_become_ascii() {
        assert_eq!(ascii(r"\d+"), "[0-9]+");
        assert_eq!(ascii(r"\D"), "[^0-9]");
        assert_eq!(ascii(r"[\w.-]+"), "[0-9A-Za-z_.-]+");
        assert_eq!(ascii(r"[^\s]"), r"[^\t\n\x0C\r ]");
        assert_eq!(ascii(r"[\Wx]"), "[[^0-9A-Za-z_]x]");
        assert_eq!(ascii(r"\bid\B"), r"(?-u:\b)id(?-u:\B)");
        assert_eq!(ascii(r"a\\d"), r"a\\d");
        assert_eq!(ascii("prod|staging"), "prod|staging");
        assert_eq!(ascii("(unclosed"), "(unclosed");
    }

    #[test]
    fn rewritten_classes_reject_non_ascii() {
        let build = |p: &str| regex::Regex::new(&format!("^(?:{})$", ascii(p))).expect("builds");
        assert!(build(r"\d+").is_match("42"));
        assert!(!build(r"\d+").is_match("\u{0661}\u{0662}"));
        assert!(!build(r"\w+").is_match("é"));
        assert!(!build(r"\s").is_match("\u{00a0}"));
        assert!(!build(r"\s").is_match("\u{000b}"));
        assert!(build(r"\D").is_match("\u{0661}"));
        assert!(build(r"[\d]{2}").is_match("07"));
        assert!(!build(r"[\d]{2}").is_match("\u{0660}7"));
    }
}

//! The timeline's text handling: escaping for the page (HTML, SVG) and the JUnit report
//! (XML), and finding the jobs and processes a violation's message names.

use std::collections::BTreeSet;

/// Escapes text for HTML and SVG, in element content and in quoted attributes.
pub fn esc(text: &str) -> String {
    escape_markup(text, Markup::Html)
}

/// Where escaped text goes: the page's HTML and SVG, or the JUnit report's XML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Markup {
    /// `'` as `&#39;`; every control character but newline and tab (a torn line, a
    /// terminal escape: invalid in XML, meaningless on the page) as U+FFFD.
    Html,
    /// `'` as `&apos;`; the control characters XML 1.0 forbids even escaped (below 0x20,
    /// but newline, carriage return and tab) as `?`.
    Xml,
}

/// Escapes `&`, `<`, `>`, `"` and `'` as entities, for element content and quoted
/// attributes alike, and replaces what `markup` cannot hold.
pub fn escape_markup(text: &str, markup: Markup) -> String {
    let (apos, replacement) = match markup {
        Markup::Html => ("&#39;", '\u{FFFD}'),
        Markup::Xml => ("&apos;", '?'),
    };
    let cannot_hold = |c: char| match markup {
        Markup::Html => c.is_control() && c != '\n' && c != '\t',
        Markup::Xml => (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t'),
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str(apos),
            c if cannot_hold(c) => out.push(replacement),
            c => out.push(c),
        }
    }
    out
}

/// What a violation's message names: job ids (`job 7`) and process ids (`pid 1234`). The
/// checkers name jobs and processes in exactly these words (`check/mod.rs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub jobs: BTreeSet<i64>,
    pub pids: BTreeSet<u32>,
}

pub fn named_in(text: &str) -> Named {
    let mut named = Named::default();
    let words: Vec<&str> = text.split(|c: char| c.is_whitespace() || c == '(' || c == ',').collect();
    for pair in words.windows(2) {
        let number = pair[1].trim_end_matches(|c: char| !c.is_ascii_digit());
        match pair[0] {
            "job" => named.jobs.extend(number.parse::<i64>().ok()),
            "pid" => named.pids.extend(number.parse::<u32>().ok()),
            _ => {}
        }
    }
    named
}
